"""Model zoo. Every model takes NCHW inputs in [0, 1], normalizes inside and returns
logits, so attacks, Hessians and invariance metrics work on all of them unchanged.

Importing this package registers every model.
"""

from . import stdcnn  # noqa: F401

# gcnn imports escnn only when a GCNN is built, so a broken import here is a real bug
# and must not silently unregister models.
from . import gcnn  # noqa: F401,E402
from . import zoo  # noqa: F401,E402

from .base import build_model, count_parameters  # noqa: E402,F401
