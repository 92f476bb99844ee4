"""Average L2 distance to the decision boundary, by DeepFool.

The spatial-vs-adversarial paper (Kamath et al., supplementary, Fig. 16) takes the
norm of DeepFool's perturbation as an approximation of a test point's shortest
distance to the decision boundary and averages it: that distance falls as models
learn larger rotations. Two averages are recorded, from one DeepFool run that pushes each
input away from the model's own prediction (the original algorithm; where the model is right
that is the label):

* `boundary.l2`: over the correctly classified inputs DeepFool fooled, in [0, 1] pixel units,
  with the success rate (DeepFool does not fool every input within its step budget);
* `boundary.all.*`: the papers' averaging, over every test point, with the perturbation
  also measured in the model's normalized-input units (each channel divided by the
  standard deviation the model normalizes with), the units the paper's models see.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from ..attacks import deepfool_batched
from ..registry import METRICS
from .base import Metric, MetricOptions, MetricResult, Run


class BoundaryOptions(MetricOptions):
    steps: int = Field(50, ge=1)
    overshoot: float = Field(0.02, ge=0)
    # Classes linearized per step: the label and the top others (the original uses 10).
    candidates: int = Field(10, ge=2)


def input_std(model: nn.Module, info) -> torch.Tensor:
    """Per-channel standard deviation the model divides its input by: that of its first
    per-channel normalization layer (a buffer named `std` of shape (1, C, 1, 1)), else the
    dataset's (a model that standardizes each image by itself has no fixed one)."""
    for m in model.modules():
        std = getattr(m, "std", None)
        if torch.is_tensor(std) and std.dim() == 4 and std.shape[1] == info.channels:
            return std.detach().reshape(1, -1, 1, 1)
    return torch.tensor(info.std, dtype=torch.float32).reshape(1, -1, 1, 1)


class BoundaryDistance(Metric):
    """Mean L2 DeepFool perturbation (Moosavi-Dezfooli et al. 2016; used as distance to
    the boundary in Kamath et al., spatial vs adversarial robustness, Fig. 16), batched:
    `boundary.l2`, `boundary.l2_rel` (mean of ‖δ‖/‖x‖) over correctly classified,
    fooled inputs, and `boundary.success_rate` (fooled / correctly classified); the papers'
    average over every test point: `boundary.all.l2` ([0, 1] pixel units),
    `boundary.all.l2_normalized` (‖δ/σ‖ with σ the model's per-channel normalization) and
    `boundary.all.success_rate` (fooled / all)."""
    fast_path = True    # attacks and forward passes only: may run under eval_amp / eval_compile

    def outputs(self, o: BoundaryOptions):
        return ["boundary.l2", "boundary.l2_rel", "boundary.success_rate", "boundary.n",
                "boundary.all.l2", "boundary.all.l2_normalized", "boundary.all.success_rate"], []

    def compute(self, run: Run, o: BoundaryOptions) -> MetricResult:
        x, y = run.x, run.y
        # Away from the model's own prediction: the label where it is right, so the correctly
        # classified inputs get the same perturbations as an attack on the label would give.
        df = deepfool_batched(run.model, x, None, steps=o.steps, overshoot=o.overshoot,
                              candidates=o.candidates, batch_size=run.batch_size)
        correct = df.labels == y
        ok = correct & df.fooled
        delta = df.adv - x
        dist = delta.reshape(len(x), -1).norm(dim=1)
        size = x.reshape(len(x), -1).norm(dim=1).clamp_min(1e-12)
        sigma = input_std(run.model, run.ctx.data.info).to(x.device, x.dtype)
        dist_norm = (delta / sigma).reshape(len(x), -1).norm(dim=1)
        n_ok = int(ok.sum())
        n_correct = int(correct.sum())
        nan = float("nan")
        return MetricResult({
            "boundary.l2": dist[ok].mean().item() if n_ok else nan,
            "boundary.l2_rel": (dist[ok] / size[ok]).mean().item() if n_ok else nan,
            "boundary.success_rate": n_ok / n_correct if n_correct else nan,
            "boundary.n": float(n_ok),
            "boundary.all.l2": dist.mean().item(),
            "boundary.all.l2_normalized": dist_norm.mean().item(),
            "boundary.all.success_rate": df.fooled.float().mean().item(),
        })


boundary_distance = METRICS.register("boundary_distance", BoundaryOptions)(BoundaryDistance())
