"""Metrics taken after training (and, with `every_epochs` / `at_epochs`, during it). A metric
is a `Metric` subclass (metrics.base) registered with its options class; importing this
package registers every metric.
"""

from .base import EvalContext, Metric, MetricOptions, MetricResult, Run, evaluation_mode, predict  # noqa: F401
from . import accuracy, boundary, corruption, geometry, hessian, invariance, robustness, universal  # noqa: F401
from . import spatial_attack  # noqa: F401
