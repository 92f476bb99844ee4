"""Clean accuracy."""

from __future__ import annotations

from pydantic import Field, model_validator

from ..registry import METRICS
from .base import Metric, MetricOptions, MetricResult, Run, Split


class AccuracyOptions(MetricOptions):
    splits: list[Split] = Field(default_factory=lambda: ["test", "val"])
    # One split instead of `splits`.
    split: Split | None = None
    n: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _one_way(self):
        if self.split is not None and "splits" in self.model_fields_set:
            raise ValueError("give either 'split' or 'splits', not both")
        return self


class Accuracy(Metric):
    """Top-1 accuracy; `accuracy` is the test split, others are `accuracy.<split>`."""

    def subsets(self, o: AccuracyOptions):
        return [(s, o.n) for s in ([o.split] if o.split else o.splits)]

    def compute(self, run: Run, o: AccuracyOptions) -> MetricResult:
        key = "accuracy" if run.split == "test" else f"accuracy.{run.split}"
        # Per-example outcomes under the scalar's name at x = 0, for paired tests.
        acc, _ = run.rates(key, 0.0, run.predict())
        return MetricResult({key: acc})


accuracy = METRICS.register("accuracy", AccuracyOptions)(Accuracy())
