"""Metrics taken after training. A metric is a function `(ctx, options) -> MetricResult`
registered with its options class. Importing this package registers every metric.
"""

from .base import EvalContext, MetricResult, evaluation_mode, predict  # noqa: F401
from . import accuracy  # noqa: F401

for _mod in ("robustness", "invariance", "boundary", "hessian", "universal", "geometry"):
    try:
        __import__(f"{__name__}.{_mod}")
    except ModuleNotFoundError as _e:  # metrics land one issue at a time
        if _e.name != f"{__name__}.{_mod}":
            raise
