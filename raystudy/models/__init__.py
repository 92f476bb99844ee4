"""Model zoo. Every model takes NCHW inputs in [0, 1], normalizes inside and returns
logits, so attacks, Hessians and invariance metrics work on all of them unchanged.

Importing this package registers every model.
"""

from . import stdcnn  # noqa: F401

try:  # GCNNs need escnn; the rest of the zoo must not break without it.
    from . import gcnn  # noqa: F401
except ImportError:  # pragma: no cover
    pass
try:
    from . import zoo  # noqa: F401
except ImportError:  # pragma: no cover
    pass

from .base import build_model, count_parameters  # noqa: E402,F401
