"""Training methods. A method only supplies the loss of a batch (and may react to
epoch / learning-rate-milestone events); `raystudy.train` owns the loop.

Importing this package registers every method.
"""

from .base import Method, TrainState  # noqa: F401
from . import natural  # noqa: F401

for _mod in ("adversarial", "trades", "regularizers", "cusp"):
    try:
        __import__(f"{__name__}.{_mod}")
    except ModuleNotFoundError as _e:  # modules land one issue at a time
        if _e.name != f"{__name__}.{_mod}":
            raise
