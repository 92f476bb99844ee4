"""Natural (empirical risk minimization) training."""

from __future__ import annotations

from ..registry import METHODS, Options
from .base import Method


class NaturalOptions(Options):
    pass


@METHODS.register("natural", NaturalOptions)
class Natural(Method):
    """Plain cross-entropy training; weight decay comes from the optimizer."""
