"""Study files: schema, loading, search-space expansion."""

from .load import load_study, StudyDocument
from .space import Trial, expand

__all__ = ["load_study", "StudyDocument", "Trial", "expand"]
