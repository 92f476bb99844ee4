"""The spatial adversary: worst-case accuracy over rotations and translations.

Random-rotation accuracy (`invariance`, `spatial_accuracy.t180`) is the average case; Engstrom
et al. ("Exploring the landscape of spatial robustness", ICML 2019) measure the worst case
over a set of transforms, by default rotations in ±30° and translations in ±3 px:

* `grid`: an input counts as correct only if it is classified correctly under every
  transform of a grid (their 5 × 5 translations × 31 angles on CIFAR-10; here every
  whole-pixel shift unless `grid_shifts` says how many). Odd counts contain the identity;
* `worst_of_k`: correct under all of k random transforms (k = 10 in the paper);
* `random`: correct under one random transform (the first of worst_of_k's k draws, so
  worst_of_k ≤ random holds input by input).

Transforms are raystudy.augment's batched gather (nearest neighbour, black fill). Random
draws come from a generator seeded by the metric's `seed` alone: every model of a study sees
the same transforms. An input already misclassified under some transform is not transformed
again (its outcome is settled), which makes the grid cheap on models that are not robust.

`surface` adds the joint (θ, ε) surface of the CuSP question: every input rotated by exactly
θ, then attacked by L∞ PGD at ε (a curve `spatial_attack.surface@<ε>` per ε, rows x = θ with
the column `eps`).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator

from ..attacks import attack, pgd_step
from ..augment import random_params, transform
from ..registry import METRICS, Options
from ..spec.types import Angle, Eps, Number
from .base import Metric, MetricOptions, MetricResult, Run, predict
from .robustness import eps_label

Mode = Literal["grid", "worst_of_k", "random"]


class SurfaceOptions(Options):
    """The joint (θ, ε) surface: fixed rotations, then L∞ PGD (default 2.5·ε/steps per step)."""

    angles: list[Number] = Field(default_factory=lambda: [-30.0, -15.0, 0.0, 15.0, 30.0], min_length=1)
    eps: list[Eps] = Field(default_factory=lambda: [0.0, 2 / 255, 4 / 255, 8 / 255], min_length=1)
    steps: int = Field(10, ge=1)
    alpha: Number | None = Field(None, gt=0, description="PGD step size (default 2.5 * eps / steps)")
    random_start: bool = True


class SpatialAttackOptions(MetricOptions):
    modes: list[Mode] = Field(default_factory=lambda: ["grid", "worst_of_k", "random"], min_length=1)
    rotation: Angle = Field(30.0, description="largest rotation, degrees (transforms in ±rotation)")
    translation: int = Field(3, ge=0, description="largest shift, pixels on each axis")
    grid_angles: int = Field(31, ge=1, description="grid: evenly spaced angles in ±rotation")
    grid_shifts: int | None = Field(None, ge=1, description="grid: shifts per axis, evenly spaced in "
                                    "±translation and rounded to whole pixels (null: every whole pixel)")
    k: int = Field(10, ge=1, description="worst_of_k: random transforms per input")
    n: int | None = Field(500, ge=1)
    surface: SurfaceOptions | None = None

    @model_validator(mode="after")
    def _check(self):
        if self.rotation == 0 and self.translation == 0 and any(m != "grid" for m in self.modes):
            raise ValueError("rotation 0 and translation 0 leave nothing to draw: set a range")
        return self

    def grid(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(angles (T,), shifts (T, 2)): every (angle, dx, dy) of the grid."""
        angles = torch.linspace(-self.rotation, self.rotation, self.grid_angles) if self.grid_angles > 1 \
            else torch.zeros(1)
        t = self.translation
        if self.grid_shifts is None:
            steps = torch.arange(-t, t + 1, dtype=torch.float32)
        else:
            # Whole pixels: a fractional nearest-neighbour shift would duplicate some columns.
            raw = torch.linspace(-t, t, self.grid_shifts) if self.grid_shifts > 1 else torch.zeros(1)
            steps = torch.unique(torch.sign(raw) * torch.floor(raw.abs() + 0.5))
        a, dx, dy = torch.meshgrid(angles, steps, steps, indexing="ij")
        return a.reshape(-1), torch.stack([dx.reshape(-1), dy.reshape(-1)], 1)


def first_failure(model, x, y, angles, shifts, batch_size: int) -> torch.Tensor:
    """Index of the first of T transforms under which each input is misclassified (T if none).

    `angles` (T, N) and `shifts` (T, N, 2): transform t of input i. Inputs still correct are
    evaluated under the next transforms together, as many transforms per pass as fit in a batch.
    """
    n, steps = len(x), angles.shape[0]
    fail = torch.full((n,), steps, dtype=torch.long, device=x.device)
    t = 0
    while t < steps:
        alive = (fail == steps).nonzero().squeeze(1)
        if alive.numel() == 0:
            break
        m = max(1, min(steps - t, batch_size // alive.numel()))
        a = angles[t:t + m][:, alive].reshape(-1)
        s = shifts[t:t + m][:, alive].reshape(-1, 2)
        xs = x[alive].repeat(m, 1, 1, 1)
        pred = torch.cat([predict(model, transform(xs[i:i + batch_size], a[i:i + batch_size], s[i:i + batch_size]),
                                  batch_size) for i in range(0, len(xs), batch_size)])
        wrong = (pred.view(m, -1) != y[alive]).float()
        hit = wrong.any(0)
        fail[alive[hit]] = t + wrong.argmax(0)[hit]
        t += m
    return fail


def random_draws(o: SpatialAttackOptions, n: int, k: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """k random (angle, shift) draws per input, (k, N) and (k, N, 2), seeded by `o.seed` alone."""
    g = torch.Generator(device=device)
    g.manual_seed(o.seed)
    angles, shifts = [], []
    for _ in range(k):
        a, s, _ = random_params(n, o.rotation, o.translation, generator=g, device=device)
        angles.append(torch.zeros(n, device=device) if a is None else a)
        shifts.append(torch.zeros(n, 2, device=device) if s is None else s)
    return torch.stack(angles), torch.stack(shifts)


class SpatialAttack(Metric):
    """Worst-case spatial accuracy (Engstrom et al., "Exploring the landscape of spatial
    robustness", ICML 2019): scalars `spatial_attack.<mode>.accuracy` for the grid search,
    worst-of-k and a single random transform over rotations in ±30° and shifts in ±3 px; curve
    `spatial_attack.worst_of_k` (x = k' ≤ k: accuracy under the first k' draws). With
    `surface`, one curve `spatial_attack.surface@<ε>` per ε: x = θ (every input rotated by θ),
    column `eps`, accuracy under L∞ PGD at ε after the rotation (the CuSP paper's joint
    question); the `surface` chart draws them together as a heatmap. Per-example outcomes: the
    worst_of_k and surface curve points, and the grid and random scalars at x = 0."""

    x_title = "random transforms per input (k)"

    def outputs(self, o: SpatialAttackOptions):
        scalars = [f"spatial_attack.{m}.accuracy" for m in o.modes]
        scalars += ["spatial_attack.grid.transforms"] if "grid" in o.modes else []
        curves = ["spatial_attack.worst_of_k"] if "worst_of_k" in o.modes else []
        if o.surface is not None:
            curves += sorted({surface_metric(float(e)) for e in o.surface.eps})
        return scalars, curves

    def compute(self, run: Run, o: SpatialAttackOptions) -> MetricResult:
        x, y, bs = run.x, run.y, run.batch_size
        res = MetricResult()
        if "grid" in o.modes:
            angles, shifts = o.grid()
            steps = len(angles)
            fail = first_failure(run.model, x, y, angles.to(x.device)[:, None].expand(-1, len(x)),
                                 shifts.to(x.device)[:, None, :].expand(-1, len(x), -1), bs)
            res.scalars["spatial_attack.grid.accuracy"] = run.record("spatial_attack.grid", 0.0, fail == steps)[0]
            res.scalars["spatial_attack.grid.transforms"] = float(steps)
        k = o.k if "worst_of_k" in o.modes else 1
        if "worst_of_k" in o.modes or "random" in o.modes:
            angles, shifts = random_draws(o, len(x), k, x.device)
            fail = first_failure(run.model, x, y, angles, shifts, bs)
            if "random" in o.modes:
                res.scalars["spatial_attack.random.accuracy"] = run.record("spatial_attack.random", 0.0, fail >= 1)[0]
            if "worst_of_k" in o.modes:
                accs = [run.record("spatial_attack.worst_of_k", float(j), fail >= j)[0] for j in range(1, k + 1)]
                res.scalars["spatial_attack.worst_of_k.accuracy"] = accs[-1]
                res.curves += [{"metric": "spatial_attack.worst_of_k", "x": float(j), "accuracy": a}
                               for j, a in enumerate(accs, 1)]
        if o.surface is not None:
            res.curves += surface_rows(run, o)
        return res


SURFACE = "spatial_attack.surface"


def surface_metric(eps: float) -> str:
    """The curve name of the surface's row at ε (x = θ): `spatial_attack.surface@<ε>`, one curve per
    ε, so that each (θ, ε) cell is a curve point with its own per-example outcomes."""
    return f"{SURFACE}@{eps_label(eps)}"


def surface_rows(run: Run, o: SpatialAttackOptions) -> list[dict]:
    """Accuracy after rotating every input by θ and attacking it with L∞ PGD at ε."""
    s = o.surface
    rows = []
    for theta in s.angles:
        xr = transform(run.x, angles_deg=torch.full((len(run.x),), float(theta), device=run.x.device))
        for e in sorted({float(v) for v in s.eps}):
            adv = xr if e == 0 else attack(run.model, "pgd", xr, run.y, e, batch_size=run.batch_size, seed=o.seed,
                                           steps=s.steps, alpha=s.alpha, random_start=s.random_start)
            acc = run.rates(surface_metric(e), float(theta), run.predict(adv))[0]
            alpha = pgd_step(e, s) if e > 0 else 0.0
            rows.append({"metric": surface_metric(e), "x": float(theta), "eps": e, "accuracy": acc,
                         "alpha": float(alpha), "x_title": "rotation θ (degrees), then L∞ PGD at ε"})
    return rows


spatial_attack = METRICS.register("spatial_attack", SpatialAttackOptions)(SpatialAttack())
