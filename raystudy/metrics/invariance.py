"""Invariance profiles under random rotations / translations (Kamath et al., CuSP).

The rate of invariance at θ is Pr(f(r(X)) = f(X)) for r a random rotation in
[-θ°, θ°] (the spatial-vs-adversarial paper, Sec. 2); we report it as
`consistency` beside the accuracy Pr(f(r(X)) = Y). What the curve's x means:

* rotation: θ in degrees; angle uniform in [-θ, θ] (Aug-R).
* translation: i, a fraction of the image size; integer shift uniform in
  [-round(i·size), round(i·size)] px on each axis (Aug-T: i = 0.1 on CIFAR-10 is ±3 px).
* rotation_translation: i in [0, 1]; rotation in [-i·180°, i·180°] and the
  translation above (Aug-RT, the CuSP appendix).

Transforms are nearest neighbour with black fill (raystudy.augment), drawn from a
generator seeded by the metric's `seed` alone, so every model of a study sees the
same transforms; the same uniform draws are reused at every θ (common random numbers),
which makes the profile smooth. `angles:` instead rotates every image by exactly each
listed angle (curve `invariance.<name>.fixed`): at multiples of 90° the rotation is
an exact pixel permutation, so a C4-invariant model scores exactly 1.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import AfterValidator, BeforeValidator, Field, model_validator

from ..augment import random_params, transform
from ..registry import METRICS
from ..spec.types import Angle, Number, parse_number
from .base import Metric, MetricOptions, MetricResult, Run, predict
from .robustness import normalized_auc


def _fraction(v: float) -> float:
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{v} is outside [0, 1] (a fraction of the image size)")
    return v


Fraction = Annotated[float, BeforeValidator(parse_number), AfterValidator(_fraction)]


class InvarianceOptions(MetricOptions):
    # `seed` also seeds the random transforms.
    kind: Literal["rotation", "translation", "rotation_translation"] = "rotation"
    # rotation: θ in degrees (default 0, 10, ..., 180).
    thetas: list[Angle] | None = None
    # translation / rotation_translation: i as a fraction of the image size (default 0, 0.1, ..., 1).
    levels: list[Fraction] | None = None
    # rotation only: exact angles in degrees, each applied to every image.
    angles: list[Number] | None = None
    # Also report `spatial_accuracy.t180` (accuracy under a random rotation in [-180°, 180°]).
    t180: bool = True
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_]+$")

    @model_validator(mode="after")
    def _grid_fits_kind(self):
        if self.kind == "rotation" and self.levels is not None:
            raise ValueError("'levels' is for translation / rotation_translation; rotation uses "
                             "'thetas' (degrees)")
        if self.kind != "rotation" and self.thetas is not None:
            raise ValueError(f"'thetas' is for rotation; {self.kind} uses 'levels' (fractions "
                             "of the image size in [0, 1])")
        if self.kind != "rotation" and self.angles is not None:
            raise ValueError("'angles' applies to kind: rotation only")
        for grid in ("thetas", "levels", "angles"):
            if getattr(self, grid) is not None and not getattr(self, grid):
                raise ValueError(f"'{grid}' is empty")
        return self

    @property
    def label(self) -> str:
        return self.name or self.kind

    def grid(self) -> list[float]:
        if self.kind == "rotation":
            if self.thetas is None:
                return [] if self.angles is not None else [float(t) for t in range(0, 181, 10)]
            return sorted({float(t) for t in self.thetas})
        return sorted({float(v) for v in (self.levels or [i / 10 for i in range(11)])})


def _params(kind: str, level: float, n: int, size: int, seed: int, device):
    """(angles, shifts) for one grid point, from a generator seeded by `seed` only."""
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    if kind == "rotation":
        rot, shift = level, 0
    else:
        rot = level * 180.0 if kind == "rotation_translation" else 0.0
        shift = int(round(level * size))
    angles, shifts, _ = random_params(n, rotation=rot, translation=shift, generator=g, device=device)
    return angles, shifts


def _transformed(model, x, clean, angles, shifts, bs):
    """Predicted labels of the transformed inputs, transforming one batch at a time."""
    if angles is None and shifts is None:
        return clean
    out = []
    for i in range(0, len(x), bs):
        a = None if angles is None else angles[i:i + bs]
        s = None if shifts is None else shifts[i:i + bs]
        out.append(predict(model, transform(x[i:i + bs], a, s), bs))
    return torch.cat(out)


X_TITLES = {"rotation": "θ (degrees)", "translation": "i (shifts in ±i·image size)",
            "rotation_translation": "i (rotations in ±i·180°, shifts in ±i·image size)"}


class Invariance(Metric):
    """Rotation / translation / rotation-translation invariance profile (Kamath et al.,
    spatial vs adversarial robustness, Sec. 2 and appendix: Aug-R, Aug-T, Aug-RT):
    per grid point the rate of invariance (`consistency`) and the accuracy under the
    random transform. Scalars: `invariance.<name>.auc` (mean rate over the grid's range),
    `.accuracy_auc`, and for rotation `spatial_accuracy.t180` (the CuSP table's
    spatial accuracy)."""

    def compute(self, run: Run, o: InvarianceOptions) -> MetricResult:
        res = MetricResult()
        key = f"invariance.{o.label}"
        x, bs = run.x, run.batch_size
        n, size = len(x), min(x.shape[-2:])
        clean = run.predict()
        rows = {}
        for level in o.grid():
            angles, shifts = _params(o.kind, level, n, size, o.seed, x.device)
            rows[level] = run.rates(key, level, _transformed(run.model, x, clean, angles, shifts, bs), clean)
            res.curves.append({"metric": key, "x": level, "x_title": X_TITLES[o.kind], "accuracy": rows[level][0],
                               "consistency": rows[level][1]})
        if rows:
            xs = list(rows)
            res.scalars[f"{key}.auc"] = normalized_auc(xs, [rows[v][1] for v in xs])
            res.scalars[f"{key}.accuracy_auc"] = normalized_auc(xs, [rows[v][0] for v in xs])
        if o.angles is not None:
            self._fixed(run, o, clean, res)
        if o.kind == "rotation" and o.t180:
            if 180.0 in rows:
                t180 = rows[180.0][0]
                same = next(oc for oc in run.outcomes if oc["metric"] == key and oc["x"] == 180.0)
                run.outcomes.append({**same, "metric": "spatial_accuracy.t180"})
            else:
                angles, _ = _params("rotation", 180.0, n, size, o.seed, x.device)
                t180 = run.rates("spatial_accuracy.t180", 180.0,
                                 _transformed(run.model, x, clean, angles, None, bs), clean)[0]
            res.scalars["spatial_accuracy.t180"] = t180
        return res

    @staticmethod
    def _fixed(run: Run, o: InvarianceOptions, clean, res: MetricResult) -> None:
        """Every image rotated by exactly each of `angles` (curve `<key>.fixed`)."""
        key = f"invariance.{o.label}.fixed"
        fixed = []
        for a in o.angles:
            angles = torch.full((len(run.x),), float(a), device=run.x.device)
            acc, con = run.rates(key, a, _transformed(run.model, run.x, clean, angles, None, run.batch_size), clean)
            fixed.append(con)
            res.curves.append({"metric": key, "x": float(a), "x_title": X_TITLES["rotation"], "accuracy": acc,
                               "consistency": con})
        res.scalars[f"{key}.min"] = min(fixed)
        res.scalars[f"{key}.mean"] = sum(fixed) / len(fixed)


invariance = METRICS.register("invariance", InvarianceOptions)(Invariance())
