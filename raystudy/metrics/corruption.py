"""Common-corruption profiles (Hendrycks & Dietterich 2019, CIFAR-10-C; Mu & Gilmer 2019,
MNIST-C): accuracy under each corruption at severities 0..5, generated on the fly from the
clean subset by raystudy.corruptions (its docstring defines every corruption and its
parameter per severity).

Curves: `corruption.<name>` (x = severity) with `accuracy` and `consistency` (the
prediction equals the model's clean prediction), and `corruption.mean`, their mean over the
corruptions; the mean's per-example outcomes are the (image, corruption) pairs, so its n is
images × corruptions and its Wilson interval treats the pairs as independent (they share
images: read it as a lower bound on the uncertainty). Scalars: `corruption.<name>.error`
and `corruption.mean.error` (the error rate averaged over severities 1..5: the unnormalized
corruption error of Hendrycks & Dietterich), `corruption.mean.error_gap` (that minus the
clean error: their relative corruption error, without a baseline model) and
`corruption.mean.accuracy_auc` (the mean curve's normalized area over the severities).

The noise of corruption i at severity s comes from a generator seeded by (seed, i, s) only:
every model of a study sees the same corrupted images.
"""

from __future__ import annotations

import hashlib

import torch
from pydantic import Field, field_validator

from ..corruptions import SETS, TABLE, apply
from ..errors import unknown_name_error
from ..registry import METRICS
from ..stats import normalized_auc
from .base import Metric, MetricOptions, MetricResult, Run


class CorruptionOptions(MetricOptions):
    # Names from raystudy.corruptions, or one set: mnist_c, cifar10_c, all.
    corruptions: list[str] | str = "all"
    severities: list[int] = Field(default_factory=lambda: [0, 1, 2, 3, 4, 5], min_length=1)

    @field_validator("corruptions")
    @classmethod
    def _known(cls, v):
        if isinstance(v, str):
            if v not in SETS:
                raise ValueError(unknown_name_error("corruption set", v, SETS).render())
            return v
        if not v:
            raise ValueError("'corruptions' is empty")
        for name in v:
            if name not in TABLE:
                raise ValueError(unknown_name_error("corruption", name, TABLE).render())
        return list(dict.fromkeys(v))

    @field_validator("severities")
    @classmethod
    def _levels(cls, v):
        bad = [s for s in v if not 0 <= s <= 5]
        if bad:
            raise ValueError(f"severities are 0 (clean) to 5, got {bad}")
        return sorted(set(v))

    def names(self) -> list[str]:
        return list(SETS[self.corruptions]) if isinstance(self.corruptions, str) else list(self.corruptions)


class Corruption(Metric):
    """Accuracy under common corruptions by severity (CIFAR-10-C, MNIST-C); see the module
    docstring for the curves and scalars."""
    x_title = "severity"
    # Forward passes only under eval_amp; the blurs' convolutions run in fp32 (see below).
    fast_path = True

    def compute(self, run: Run, o: CorruptionOptions) -> MetricResult:
        res = MetricResult()
        clean = run.predict()
        names = o.names()
        hits: dict[int, list] = {s: [] for s in o.severities}
        for i, name in enumerate(names):
            key = f"corruption.{name}"
            for s in o.severities:
                g = torch.Generator(device=run.x.device)
                g.manual_seed(o.seed * 1_000_003 + 1009 * i + s)
                with torch.autocast(run.x.device.type, enabled=False):
                    bad = apply(name, run.x.float(), s, g).to(run.x.dtype)
                pred = run.predict(bad)
                acc, con = run.rates(key, s, pred, clean)
                hits[s].append((pred == run.y, pred == clean))
                res.curves.append({"metric": key, "x": s, "accuracy": acc, "consistency": con})
            errs = [1 - r["accuracy"] for r in res.curves[-len(o.severities):] if r["x"] > 0]
            if errs:
                res.scalars[f"{key}.error"] = sum(errs) / len(errs)
        pairs = hashlib.blake2b(f"{run.examples()}|{','.join(names)}".encode(), digest_size=8).hexdigest()
        mean = {}
        for s in o.severities:
            acc, con = run.record("corruption.mean", s, torch.cat([c for c, _ in hits[s]]),
                                  torch.cat([k for _, k in hits[s]]), examples=pairs)
            mean[s] = acc
            res.curves.append({"metric": "corruption.mean", "x": s, "accuracy": acc, "consistency": con})
        res.scalars["corruption.mean.accuracy_auc"] = normalized_auc(list(mean), list(mean.values()))
        errs = [1 - a for s, a in mean.items() if s > 0]
        if errs:
            res.scalars["corruption.mean.error"] = sum(errs) / len(errs)
            res.scalars["corruption.mean.error_gap"] = res.scalars["corruption.mean.error"] - (
                1 - (clean == run.y).float().mean().item())
        return res

    def outputs(self, o: CorruptionOptions):
        names = o.names()
        curves = [f"corruption.{n}" for n in names] + ["corruption.mean"]
        scalars = ["corruption.mean.accuracy_auc"]
        if any(s > 0 for s in o.severities):
            scalars += [f"corruption.{n}.error" for n in names]
            scalars += ["corruption.mean.error", "corruption.mean.error_gap"]
        return scalars, curves


corruption = METRICS.register("corruption", CorruptionOptions)(Corruption())
