"""Clean accuracy."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..registry import METRICS, Options
from .base import EvalContext, MetricResult, evaluation_mode, predict


class AccuracyOptions(Options):
    splits: list[Literal["train", "val", "test"]] = Field(default_factory=lambda: ["test", "val"])
    n: int | None = Field(None, ge=1)


@METRICS.register("accuracy", AccuracyOptions)
def accuracy(ctx: EvalContext, o: AccuracyOptions) -> MetricResult:
    """Top-1 accuracy; `accuracy` is the test split, others are `accuracy.<split>`."""
    res = MetricResult()
    with evaluation_mode(ctx.model) as model:
        for split in o.splits:
            x, y = ctx.subset(split, o.n)
            if len(x) == 0:
                continue
            acc = (predict(model, x, ctx.batch_size) == y).float().mean().item()
            res.scalars["accuracy" if split == "test" else f"accuracy.{split}"] = acc
    return res
