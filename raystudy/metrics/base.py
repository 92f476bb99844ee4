"""The metric template and the options every metric shares.

A metric is a `Metric` subclass that writes only its computation (`compute`); the
template owns what every metric used to repeat: evaluation mode (the caller's mode is
restored after), the fixed seeded subset, skipping an empty subset, and timing. The
registry holds one instance per metric, called as `metric(ctx, options) -> MetricResult`.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import torch
from pydantic import BeforeValidator, Field
from torch import nn

from ..registry import Options

Split = Literal["train", "val", "test"]


@dataclass
class MetricResult:
    """Flat namespaced scalars (-> trials.parquet) and long-format curve rows
    (-> curves.parquet: each row has `metric`, `x`, `x_title` (what x means, for charts)
    and value columns such as `accuracy` and `consistency`); `seconds` is the metric's
    wall time, measured by the template."""

    scalars: dict[str, float] = field(default_factory=dict)
    curves: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class EvalContext:
    model: nn.Module
    data: Any                      # raystudy.data.DeviceData
    device: torch.device
    seed: int = 0
    batch_size: int = 500
    artifacts: Path | None = None  # where a metric may save files (e.g. a universal direction)
    trial: Any = None              # the ParsedTrial, for metrics that need the config
    extra: dict = field(default_factory=dict)

    def generator(self, offset: int = 0) -> torch.Generator:
        """A seeded generator on the device: two models see the same random draws."""
        g = torch.Generator(device=self.device)
        g.manual_seed(self.seed * 1000003 + offset)
        return g

    def subset(self, split: str = "test", n: int | None = None, seed: int = 0):
        """A fixed, seeded subset of a split (the same for every trial of a study)."""
        x, y = self.data.split(split)
        if n is None or n >= len(x):
            return x, y
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(x), generator=g)[:n].to(x.device)
        return x[idx], y[idx]


class MetricOptions(Options):
    """Options every metric accepts. A metric overrides a default (`n`, `split`) by
    redeclaring the field, and one whose subset is sized otherwise (hessian's `samples`,
    svd_universal's `n_fit` + `n_eval`) declares `n` with a `not_taken(why)` type."""

    split: Split = "test"
    n: int | None = Field(1000, ge=1, description="images of the split, a seeded subset (null: all)")
    seed: int = Field(0, description="seed of the subset (and of the metric's own draws where it says so)")
    batch_size: int | None = Field(None, ge=1, description="images per pass (default: train.eval_batch_size)")
    every_epochs: int | None = Field(None, ge=1, description="also take it after every k-th training epoch "
                                                             "(null: only after training)")


def not_taken(reason: str):
    """The type of a shared option a metric does not take: setting it is an error saying why."""
    def reject(v):
        if v is not None:
            raise ValueError(reason)
        return v
    return Annotated[None, BeforeValidator(reject)]


@dataclass
class Run:
    """What `compute` works on: the model in eval mode and one seeded subset."""

    ctx: EvalContext
    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    split: str
    batch_size: int

    def predict(self, x: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted labels of `x` (default: the subset), batched."""
        return predict(self.model, self.x if x is None else x, self.batch_size)


class Metric:
    """Template of a metric: subclasses set `x_title` (what their curves' x means, unless
    each row sets its own) and write `compute`; `subsets` says which (split, n) to draw
    when that is not the options' `split` and `n` (accuracy measures several splits)."""

    x_title: ClassVar[str] = "x"

    def subsets(self, o: MetricOptions) -> list[tuple[str, int | None]]:
        return [(o.split, o.n)]

    def compute(self, run: Run, o: MetricOptions) -> MetricResult:
        raise NotImplementedError

    def outputs(self, o: MetricOptions) -> tuple[list[str], list[str]]:
        """What `compute` writes under these options: (scalar names, curve `metric` names).
        A study's claims are checked against them before Ray starts (raystudy/spec/claims.py);
        the contract test holds every metric to what it declares."""
        raise NotImplementedError(f"metric {type(self).__name__} does not declare its outputs")

    def __call__(self, ctx: EvalContext, o: MetricOptions) -> MetricResult:
        t0 = time.perf_counter()
        res = MetricResult()
        bs = o.batch_size or ctx.batch_size
        with evaluation_mode(ctx.model) as model:
            for split, n in self.subsets(o):
                x, y = ctx.subset(split, n, o.seed)
                if len(x) == 0:
                    # A split without images (e.g. val_fraction 0) measures nothing.
                    continue
                part = self.compute(Run(ctx, model, x, y, split, bs), o)
                res.scalars.update(part.scalars)
                res.curves.extend(part.curves)
        for row in res.curves:
            row.setdefault("x_title", self.x_title)
        res.seconds = time.perf_counter() - t0
        return res


@contextlib.contextmanager
def evaluation_mode(model: nn.Module):
    """Eval mode for the duration of a metric; the model's mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Predicted labels, batched, on x's device."""
    out = [model(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long, device=x.device)
