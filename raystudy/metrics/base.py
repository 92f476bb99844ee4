"""The metric template and the options every metric shares.

A metric is a `Metric` subclass that writes only its computation (`compute`); the
template owns what every metric used to repeat: evaluation mode (the caller's mode is
restored after), the fixed seeded subset, skipping an empty subset, and timing. The
registry holds one instance per metric, called as `metric(ctx, options) -> MetricResult`.

Uncertainty is the template's too: every curve row gets `n` (the images it was measured on)
and a 95% Wilson interval `<c>_lo` / `<c>_hi` for each proportion column c (raystudy.stats),
and a metric that records per-example outcomes (`Run.record` / `Run.rates`: which images were
correct, and consistent with the clean prediction, at each curve point) gets them keyed by
`examples`, a hash of exactly the images evaluated, in order. Two trials with the same
`examples` saw the same images, so a paired test between them is valid (analysis.paired).
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import torch
from pydantic import BeforeValidator, Field
from torch import nn

from ..registry import Options
from ..stats import PROPORTIONS, add_intervals

Split = Literal["train", "val", "test"]


@dataclass
class MetricResult:
    """Flat namespaced scalars (-> trials.parquet) and long-format curve rows
    (-> curves.parquet: each row has `metric`, `x`, `x_title` (what x means, for charts)
    and value columns such as `accuracy` and `consistency`); `seconds` is the metric's
    wall time, measured by the template. `outcomes`: per-example results, one dict per curve
    point (or proportion scalar, at x = 0) with `metric`, `x`, `correct` (bool tensor [n]),
    `consistent` (bool tensor [n] or None) and `examples` (see `examples_key`)."""

    scalars: dict[str, float] = field(default_factory=dict)
    curves: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    outcomes: list[dict[str, Any]] = field(default_factory=list)


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
    outcomes: list[dict[str, Any]] = field(default_factory=list)

    def predict(self, x: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted labels of `x` (default: the subset), batched."""
        return predict(self.model, self.x if x is None else x, self.batch_size)

    def examples(self, start: int = 0, stop: int | None = None) -> str:
        """The `examples` key of the subset's images [start:stop] (default: all of them)."""
        return examples_key(self.x[start:stop], self.y[start:stop])

    def record(self, metric: str, x: float, correct: torch.Tensor, consistent: torch.Tensor | None = None,
               examples: str | None = None) -> tuple[float, float | None]:
        """Keep one curve point's per-example outcomes (on the whole subset unless `examples`
        says otherwise) and return its (accuracy, consistency) as floats."""
        self.outcomes.append({"metric": metric, "x": float(x), "correct": correct.detach().bool(),
                              "consistent": None if consistent is None else consistent.detach().bool(),
                              "examples": examples})
        return correct.float().mean().item(), None if consistent is None else consistent.float().mean().item()

    def rates(self, metric: str, x: float, pred: torch.Tensor, clean: torch.Tensor | None = None):
        """`record` from predicted labels of the subset: correct = pred == y, consistent =
        pred == clean (the model's own clean predictions) when `clean` is given."""
        return self.record(metric, x, pred == self.y, None if clean is None else pred == clean)


def examples_key(x: torch.Tensor, y: torch.Tensor) -> str:
    """A short hash of exactly these images (their float32 values, shape and order) and labels:
    equal keys mean the same images in the same order, whatever config produced them."""
    h = hashlib.blake2b(digest_size=8)
    h.update(repr(tuple(x.shape)).encode())
    h.update(x.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    h.update(y.detach().to("cpu", torch.int64).contiguous().numpy().tobytes())
    return h.hexdigest()


class Metric:
    """Template of a metric: subclasses set `x_title` (what their curves' x means, unless
    each row sets its own) and write `compute`; `subsets` says which (split, n) to draw
    when that is not the options' `split` and `n` (accuracy measures several splits);
    `proportions` are the curve columns that get a Wilson interval."""

    x_title: ClassVar[str] = "x"
    proportions: ClassVar[tuple[str, ...]] = PROPORTIONS

    def subsets(self, o: MetricOptions) -> list[tuple[str, int | None]]:
        return [(o.split, o.n)]

    def compute(self, run: Run, o: MetricOptions) -> MetricResult:
        raise NotImplementedError

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
                run = Run(ctx, model, x, y, split, bs)
                part = self.compute(run, o)
                self._uncertainty(part, run)
                res.scalars.update(part.scalars)
                res.curves.extend(part.curves)
                res.outcomes.extend(part.outcomes)
        for row in res.curves:
            row.setdefault("x_title", self.x_title)
        res.seconds = time.perf_counter() - t0
        return res

    def _uncertainty(self, part: MetricResult, run: Run) -> None:
        """Key the run's outcomes by their images; give every curve row its n (that of its
        outcomes when it has some, else the subset's) and Wilson intervals."""
        part.outcomes.extend(run.outcomes)
        whole = None
        sizes = {}
        for oc in part.outcomes:
            if oc.get("examples") is None:
                whole = whole or run.examples()
                oc["examples"] = whole
            sizes[(oc["metric"], float(oc["x"]))] = len(oc["correct"])
        for row in part.curves:
            at = (row.get("metric"), float(row["x"])) if isinstance(row.get("x"), (int, float)) else None
            add_intervals(row, sizes.get(at, len(run.x)), self.proportions)


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
