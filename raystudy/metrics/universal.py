"""SVD-Universal perturbations and universal invariant directions.

SVD-Universal (papers/abstracts_*: "the top
singular vector of input-dependent adversarial directions on a small test sample
gives an effective and simple universal adversarial attack"), and its study on
GCNNs, which introduces universal invariant directions: the top singular vector
of the perturbations r(x) - x made by random rotations / translations.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from .. import augment as aug
from ..attacks import deepfool_batched, input_grad_only
from ..registry import METRICS
from ..spec.types import Angle, Eps
from .base import Metric, MetricOptions, MetricResult, Run, not_taken, predict

DirectionAttack = Literal["gradient", "fgsm", "deepfool"]


# --------------------------------------------------------------------- directions

def input_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """∇ₓ CE(f(x), y), batched (the per-example loss gradient, not the batch mean's)."""
    out = []
    with input_grad_only(model):
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size].detach().clone().requires_grad_(True)
            loss = F.cross_entropy(model(xb), y[i:i + batch_size], reduction="sum")
            out.append(torch.autograd.grad(loss, xb)[0])
    return torch.cat(out) if out else torch.empty_like(x)


def _deepfool(model, x, steps, overshoot, batch_size):
    """DeepFool perturbations x_adv - x from raystudy.attacks' batched DeepFool."""
    return deepfool_batched(model, x, steps=steps, overshoot=overshoot, batch_size=batch_size).adv - x


def attack_directions(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: str, *,
                      batch_size: int = 500, deepfool_steps: int = 50, overshoot: float = 0.02) -> torch.Tensor:
    """Input-dependent adversarial directions (same shape as x, not yet normalized).

    gradient: ∇ₓ loss; fgsm: sign(∇ₓ loss) (its size is irrelevant once normalized);
    deepfool: the DeepFool perturbation x_adv - x.
    """
    if attack == "gradient":
        return input_gradients(model, x, y, batch_size)
    if attack == "fgsm":
        return input_gradients(model, x, y, batch_size).sign()
    if attack == "deepfool":
        return _deepfool(model, x, deepfool_steps, overshoot, batch_size)
    raise ValueError(f"unknown direction attack {attack!r}")


def universal_direction(directions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Top right singular vector of the stacked, L2-normalized directions.

    Returns (v with the shape of one direction and unit L2 norm, singular values in
    descending order). Zero directions (e.g. an already-saturated gradient) are dropped.
    """
    m = directions.reshape(directions.shape[0], -1).double()
    norms = m.norm(dim=1)
    m = m[norms > 0] / norms[norms > 0, None]
    if m.shape[0] == 0:
        raise ValueError("every direction is zero: no universal direction exists")
    _, s, vh = torch.linalg.svd(m, full_matrices=False)   # descending; SciPy's svds is ascending
    return vh[0].to(directions.dtype).reshape(directions.shape[1:]), s.to(directions.dtype)


def top_energy(s: torch.Tensor) -> float:
    """Share of the stacked directions' energy on the top singular vector (1 = all aligned)."""
    e = s.double() ** 2
    return (e[0] / e.sum()).item()


# ---------------------------------------------------------------------- evaluation

@torch.no_grad()
def fooling_and_accuracy(model, x, y, clean_pred, delta, batch_size=500) -> tuple[float, float]:
    """Fooling rate against the clean predictions, and accuracy, of x + delta (clipped to [0, 1])."""
    pred = predict(model, (x + delta).clamp(0, 1), batch_size)
    return (pred != clean_pred).float().mean().item(), (pred == y).float().mean().item()


def _scale(v: torch.Tensor, norm: str, size: float) -> torch.Tensor:
    d = v.norm() if norm == "l2" else v.abs().max()
    return v * (size / d) if d > 0 else v


def _best_sign(model, x, y, clean, v, norm, size, bs) -> tuple[float, float, int]:
    """Both signs of a direction are tried (a singular vector's sign is arbitrary)."""
    delta = _scale(v, norm, size).unsqueeze(0)
    fp, ap = fooling_and_accuracy(model, x, y, clean, delta, bs)
    fn, an = fooling_and_accuracy(model, x, y, clean, -delta, bs)
    return (fp, ap, 1) if fp >= fn else (fn, an, -1)


NoN = not_taken("svd_universal's subset is n_fit + n_eval images: set those instead of n")


class SVDUniversalOptions(MetricOptions):
    attacks: list[DirectionAttack] = Field(default_factory=lambda: ["gradient", "fgsm", "deepfool"], min_length=1)
    n_fit: int = Field(64, ge=1, description="test images whose attack directions are stacked")
    n_eval: int = Field(1000, ge=1, description="disjoint images the universal perturbation is scored on")
    n: NoN = None
    split: Literal["test", "val"] = "test"
    l2: list[float] = Field(default_factory=lambda: [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    linf: list[Eps] = Field(default_factory=list)
    at_l2: float | None = Field(None, description="L2 norm of the named scalars (default: the largest)")
    at_linf: Eps | None = None
    random_draws: int = Field(3, ge=1)
    deepfool_steps: int = Field(50, ge=1)
    overshoot: float = Field(0.02, ge=0.0)

    @model_validator(mode="after")
    def _check(self):
        if not self.l2 and not self.linf:
            raise ValueError("declare at least one norm in l2 or linf")
        if any(v < 0 for v in self.l2):
            raise ValueError("l2 norms must be >= 0")
        if self.at_l2 is not None and self.at_l2 not in self.l2:
            raise ValueError(f"at_l2={self.at_l2} is not one of l2={self.l2}")
        if self.at_linf is not None and self.at_linf not in self.linf:
            raise ValueError(f"at_linf={self.at_linf} is not one of linf={self.linf}")
        return self


def _save(ctx, folder: str, file: str, payload: dict) -> None:
    """A direction and its singular values, for later analysis (when the trial keeps files)."""
    if ctx.artifacts is not None:
        path = ctx.artifacts / folder
        path.mkdir(parents=True, exist_ok=True)
        torch.save(payload, path / file)


class SVDUniversal(Metric):
    """SVD-Universal (universalization of gradient / FGSM / DeepFool directions
    from ~64 test images; papers/abstracts_*: SVD-Universal, and its GCNN study).

    Curves `svd_universal.<attack>` (L2) and `svd_universal.<attack>.linf`: x = norm,
    fooling rate (vs clean predictions) and accuracy of the better sign of ±v, and of a
    random Gaussian direction of the same norm (also its better sign, averaged over draws).
    The first n_fit images of the seeded subset build the direction, the rest score it.
    """

    def subsets(self, o: SVDUniversalOptions):
        return [(o.split, o.n_fit + o.n_eval)]

    def compute(self, run: Run, o: SVDUniversalOptions) -> MetricResult:
        if len(run.x) <= o.n_fit:
            raise ValueError(f"the {run.split} split has {len(run.x)} images: need more than n_fit={o.n_fit}")
        xf, yf = run.x[:o.n_fit], run.y[:o.n_fit]
        xe, ye = run.x[o.n_fit:], run.y[o.n_fit:]
        res = MetricResult()
        clean = run.predict(xe)
        res.scalars["svd_universal.clean_accuracy"] = (clean == ye).float().mean().item()
        randoms = torch.randn((o.random_draws, *xe.shape[1:]), generator=run.ctx.generator(offset=7),
                              device=xe.device)
        score = _Scorer(run.model, xe, ye, clean, run.batch_size, randoms, examples=run.examples(o.n_fit))
        for a in o.attacks:
            dirs = attack_directions(run.model, xf, yf, a, batch_size=run.batch_size,
                                     deepfool_steps=o.deepfool_steps, overshoot=o.overshoot)
            v, s = universal_direction(dirs)
            res.scalars[f"svd_universal.{a}.top_energy"] = top_energy(s)
            _save(run.ctx, "svd_universal", f"{a}.pt", {"direction": v.detach().cpu(), "singular_values":
                                                          s.detach().cpu(), "attack": a, "n_fit": len(xf)})
            for norm, sizes, at in (("l2", o.l2, o.at_l2), ("linf", o.linf, o.at_linf)):
                if sizes:
                    _profile(score, v, f"svd_universal.{a}" + ("" if norm == "l2" else ".linf"), norm, sizes,
                             max(sizes) if at is None else at, res)
        return res


@dataclass
class _Scorer:
    """Scores directions on the evaluation images; the random baseline is the same for
    every attack, so it is scored once per (norm, size)."""

    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    clean: torch.Tensor
    batch_size: int
    randoms: torch.Tensor
    examples: str | None = None   # the evaluation images' key (raystudy.metrics.base.examples_key)
    baseline: dict = field(default_factory=dict)

    def best(self, v, norm, size) -> tuple[float, float, int]:
        return _best_sign(self.model, self.x, self.y, self.clean, v, norm, size, self.batch_size)

    def random(self, norm, size) -> tuple[float, float]:
        """Mean fooling rate and accuracy of the random directions (each at its better sign)."""
        if (norm, size) not in self.baseline:
            rnd = [self.best(r, norm, size) for r in self.randoms]
            self.baseline[(norm, size)] = (sum(r[0] for r in rnd) / len(rnd), sum(r[1] for r in rnd) / len(rnd))
        return self.baseline[(norm, size)]

    @torch.no_grad()
    def outcome(self, v, norm, size, sign) -> tuple[torch.Tensor, torch.Tensor]:
        """Per evaluation image: (correct, consistent with its clean prediction) under sign · v."""
        delta = sign * _scale(v, norm, size).unsqueeze(0)
        pred = predict(self.model, (self.x + delta).clamp(0, 1), self.batch_size)
        return pred == self.y, pred == self.clean


def _profile(score: _Scorer, v, metric: str, norm: str, sizes, at: float, res: MetricResult) -> None:
    """Fooling rate and accuracy of ±v scaled to each size, beside random directions."""
    for size in sizes:
        fr, acc, sign = score.best(v, norm, size)
        fr_rnd, acc_rnd = score.random(norm, size)
        row = {"metric": metric, "x": float(size),
               "x_title": "perturbation norm (L2)" if norm == "l2" else "perturbation norm (L∞)",
               "norm": norm, "fooling_rate": fr, "accuracy": acc, "consistency": 1.0 - fr, "sign": sign,
               "fooling_rate_random": fr_rnd, "accuracy_random": acc_rnd, "n": len(score.x)}
        res.curves.append(row)
        correct, consistent = score.outcome(v, norm, size, sign)
        res.outcomes.append({"metric": metric, "x": float(size), "correct": correct, "consistent": consistent,
                             "examples": score.examples})
        if size == at:
            for key in ("fooling_rate", "accuracy", "fooling_rate_random", "accuracy_random"):
                res.scalars[f"{metric}.{key}"] = row[key]


svd_universal = METRICS.register("svd_universal", SVDUniversalOptions)(SVDUniversal())


# ------------------------------------------------------------- invariant directions

def transform_perturbations(x: torch.Tensor, rotation: float, translation: int, draws: int,
                            generator: torch.Generator) -> torch.Tensor:
    """r(x) - x for `draws` random rotations in [-θ, θ] and shifts in [-t, t] per image."""
    xs = x.repeat(draws, 1, 1, 1)
    return aug.random_transform(xs, rotation=rotation, translation=translation, generator=generator) - xs


class InvariantDirectionsOptions(MetricOptions):
    rotations: list[Angle] = Field(default_factory=lambda: [180.0], min_length=1)
    translation: int = Field(0, ge=0)
    draws: int = Field(1, ge=1, description="random transforms per image")
    n: int = Field(64, ge=1)
    split: Literal["test", "val"] = "test"
    attack: DirectionAttack = "fgsm"
    deepfool_steps: int = Field(50, ge=1)
    overshoot: float = Field(0.02, ge=0.0)

    @model_validator(mode="after")
    def _check(self):
        if self.translation == 0 and any(r == 0 for r in self.rotations):
            raise ValueError("a rotation of 0 with translation 0 moves nothing: no invariant direction")
        return self


def unsigned_angle(u: torch.Tensor, v: torch.Tensor) -> tuple[float, float]:
    """(angle in degrees in [0, 90], |cos|): singular vectors have no sign."""
    c = (u.flatten().double() @ v.flatten().double()).abs() / (u.double().norm() * v.double().norm())
    c = c.clamp(0, 1)
    return torch.rad2deg(torch.arccos(c)).item(), c.item()


class InvariantDirections(Metric):
    """Universal invariant directions (SVD-Universal on GCNNs, papers/abstracts_*): the top
    singular vector of r(x) - x under random rotations in [-θ, θ] (and shifts), and its
    angle to the SVD-Universal direction of the declared attack on the same images.

    Two random unit vectors in d dimensions are nearly orthogonal (|cos| ~ sqrt(2/(πd)),
    about 88° for MNIST), which is the reference for the angle.
    """

    x_title = "rotation (degrees)"

    def compute(self, run: Run, o: InvariantDirectionsOptions) -> MetricResult:
        res = MetricResult()
        dirs = attack_directions(run.model, run.x, run.y, o.attack, batch_size=run.batch_size,
                                 deepfool_steps=o.deepfool_steps, overshoot=o.overshoot)
        v_adv, _ = universal_direction(dirs)
        g = run.ctx.generator(offset=11)
        last = None
        for theta in o.rotations:
            u, s = universal_direction(transform_perturbations(run.x, theta, o.translation, o.draws, g))
            angle, cos = unsigned_angle(u, v_adv)
            last = {"metric": "invariant_directions", "x": float(theta), "angle": angle, "cosine": cos,
                    "top_energy": top_energy(s), "attack": o.attack}
            res.curves.append(last)
            _save(run.ctx, "invariant_directions", f"rot{theta:g}_t{o.translation}.pt",
                  {"direction": u.cpu(), "singular_values": s.cpu(), "rotation": theta, "translation": o.translation})
        for key in ("angle", "cosine", "top_energy"):
            res.scalars[f"invariant_directions.{key}"] = last[key]
        return res


invariant_directions = METRICS.register("invariant_directions", InvariantDirectionsOptions)(InvariantDirections())
