"""Study files: schema, loading, search-space expansion, the plan (validated trials)."""

from .load import load_study, StudyDocument
from .plan import Plan
from .space import Trial, expand

__all__ = ["load_study", "StudyDocument", "Plan", "Trial", "expand"]
