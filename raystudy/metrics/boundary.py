"""Average L2 distance to the decision boundary, by DeepFool.

The spatial-vs-adversarial paper (Kamath et al., supplementary, Fig. 16) takes the
norm of DeepFool's perturbation as an approximation of a test point's shortest
distance to the decision boundary and averages it: that distance falls as models
learn larger rotations. DeepFool does not fool every input within its step budget,
so the mean is over correctly classified inputs it fooled, reported with the rate.
"""

from __future__ import annotations

from pydantic import Field

from ..attacks import deepfool_batched
from ..registry import METRICS
from .base import Metric, MetricOptions, MetricResult, Run


class BoundaryOptions(MetricOptions):
    steps: int = Field(50, ge=1)
    overshoot: float = Field(0.02, ge=0)
    # Classes linearized per step: the label and the top others (the original uses 10).
    candidates: int = Field(10, ge=2)


class BoundaryDistance(Metric):
    """Mean L2 DeepFool perturbation (Moosavi-Dezfooli et al. 2016; used as distance to
    the boundary in Kamath et al., spatial vs adversarial robustness, Fig. 16), batched:
    `boundary.l2`, `boundary.l2_rel` (mean of ‖δ‖/‖x‖) over correctly classified,
    fooled inputs, and `boundary.success_rate` (fooled / correctly classified)."""
    fast_path = True    # attacks and forward passes only: may run under eval_amp / eval_compile

    def outputs(self, o: BoundaryOptions):
        return ["boundary.l2", "boundary.l2_rel", "boundary.success_rate", "boundary.n"], []

    def compute(self, run: Run, o: BoundaryOptions) -> MetricResult:
        x, y = run.x, run.y
        # Push each input away from its true label: inputs the model gets wrong are
        # already past the boundary and count as neither success nor failure.
        df = deepfool_batched(run.model, x, y, steps=o.steps, overshoot=o.overshoot,
                              candidates=o.candidates, batch_size=run.batch_size)
        correct = run.predict() == y
        ok = correct & df.fooled
        delta = (df.adv - x).reshape(len(x), -1).norm(dim=1)
        size = x.reshape(len(x), -1).norm(dim=1).clamp_min(1e-12)
        n_ok = int(ok.sum())
        n_correct = int(correct.sum())
        nan = float("nan")
        return MetricResult({
            "boundary.l2": delta[ok].mean().item() if n_ok else nan,
            "boundary.l2_rel": (delta[ok] / size[ok]).mean().item() if n_ok else nan,
            "boundary.success_rate": n_ok / n_correct if n_correct else nan,
            "boundary.n": float(n_ok),
        })


boundary_distance = METRICS.register("boundary_distance", BoundaryOptions)(BoundaryDistance())
