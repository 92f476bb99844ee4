"""Training health: the values behind `health.did_not_learn_*`, `health.nonfinite_loss` and
`health.robust_overfit_*`, measured in the worker once training ends (judged by
raystudy.health.judge in the driver).

* did_not_learn: a model left at chance looks like any other finished trial in the tables;
  its final training loss sits at ln K (the loss of a uniform prediction over K classes) and
  its clean accuracy near 1/K. Both ratios are recorded: loss / ln K and accuracy · K.
* nonfinite_loss: epochs whose mean loss was NaN/inf (a trial with `fail_on_nonfinite`
  stops on the first and is recorded as failed with the value 1: raystudy.trainable).
* robust_overfit: Rice et al. ("Overfitting in adversarially robust deep learning", ICML
  2020) show robust test accuracy peaking early in adversarial training and falling after;
  when a robustness profile is tracked during training (`every_epochs`; a `val.` prefix
  when it runs on the validation split), the drop of its AUC from the best epoch to the last.
"""

from __future__ import annotations

import math
import re
import time

import torch

from .metrics.base import EvalContext
from .train import quick_accuracy

# Per-epoch robustness AUCs in the epoch log (`val.` once the validation split carries them).
_ROBUST_KEY = re.compile(r"^(val\.)?robustness\.[^@]+\.auc$")


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def robust_overfit(history: list[dict]) -> dict[str, float]:
    """Drop of each per-epoch robustness AUC from its best epoch to the last (the largest
    over the tracked profiles), and how many epochs before the end that best epoch was."""
    out: dict[str, float] = {}
    for key in sorted({k for h in history for k in h if _ROBUST_KEY.match(k)}):
        pts = [(h["epoch"], h[key]) for h in history if _finite(h.get(key))]
        if len(pts) < 2:
            continue
        best_epoch, best = max(pts, key=lambda p: (p[1], -p[0]))
        last_epoch, last = pts[-1]
        if best - last > out.get("health.robust_overfit_drop", -math.inf):
            out["health.robust_overfit_drop"] = best - last
            out["health.robust_overfit_epochs"] = float(last_epoch - best_epoch)
    return out


def training_checks(history: list[dict], model: torch.nn.Module, data, health, seed: int = 0) -> dict[str, float]:
    """The training `health.*` values of a finished trial (empty when health is off)."""
    if health is None or not health.enabled:
        return {}
    t0 = time.perf_counter()
    k = data.info.num_classes
    out: dict[str, float] = {"health.chance": 1.0 / k}
    if health.on("did_not_learn"):
        last = history[-1].get("loss") if history else None
        if _finite(last):
            out["health.did_not_learn_loss_ratio"] = float(last) / math.log(k)
        split = "test" if len(data.split("test")[0]) else "val"
        x, y = EvalContext(model=model, data=data, device=data.x_train.device).subset(split, 1000, seed)
        if len(x):
            out["health.did_not_learn_acc_ratio"] = quick_accuracy(model, x, y) * k
    if health.on("nonfinite_loss"):
        out["health.nonfinite_loss"] = float(sum(1 for h in history if "loss" in h and not _finite(h["loss"])))
    if health.on("robust_overfit"):
        out.update(robust_overfit(history))
    out["time.health.training_s"] = time.perf_counter() - t0
    return out
