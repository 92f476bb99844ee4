"""Best-epoch selection (`train.select`): keep the weights of the epoch whose validation
scalar was best, and evaluate those instead of the last epoch's.

Rice, Wong and Kolter ("Overfitting in adversarially robust deep learning", ICML 2020) show
that adversarial training overfits robustly: robust test accuracy peaks soon after the first
learning-rate decay and then falls while training goes on, and that early stopping on a
held-out robust accuracy recovers the peak. The selection reads only validation numbers
(`val_accuracy`, `val_loss`, `val.<scalar>` of `every_epochs` metrics: spec.selection), never
the test split the final metrics report.

A staged run (`a -> b`, train.stages) selects among its last stage's epochs only: the row is
b's training, and an earlier stage's weights would silently stand in for it. Validation
metrics are still logged during every stage.

The best weights live on the trial's device and ride in every training checkpoint
(`state["select"]`), so a worker that dies after the best epoch resumes with them.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn


class BestEpoch:
    """Tracks `select.by` over the epochs of one fit; `wrap` hooks it into fit's callback."""

    def __init__(self, select, model: nn.Module, resume: dict | None = None, first_epoch: int = 1,
                 last_epoch: int | None = None):
        self.by, self.mode = select.by, select.mode
        self.model = model
        # 1-based: the last stage's first epoch, and the fit's last epoch.
        self.first_epoch, self.last_epoch = first_epoch, last_epoch
        saved = (resume or {}).get("select") or {}
        self.epoch: int | None = saved.get("epoch")
        self.value: float | None = saved.get("value")
        # The value at the last epoch that logged it (the final epoch: execute.due_every), so
        # a robust-overfitting check reads best minus last without the epoch log.
        self.last: float | None = saved.get("last")
        device = next(iter(model.state_dict().values())).device
        self.weights: dict | None = ({k: v.to(device) for k, v in saved["model"].items()}
                                     if saved.get("model") is not None else None)

    def better(self, v: float) -> bool:
        """Whether `v` beats the best so far; a tie goes to the later epoch (more training)."""
        if self.value is None:
            return True
        return v >= self.value if self.mode == "max" else v <= self.value

    @classmethod
    def for_trial(cls, parsed, model: nn.Module, resume: dict | None) -> "BestEpoch | None":
        select = parsed.cfg.train.select
        if select is None:
            return None
        epochs = [s.epochs for s in parsed.stages]
        return cls(select, model, resume, first_epoch=sum(epochs[:-1]) + 1, last_epoch=sum(epochs))

    def observe(self, metrics: dict) -> None:
        v = metrics.get(self.by)
        if v is None and metrics["epoch"] == self.last_epoch:
            # Every every_epochs metric runs after the last epoch (execute.due_every): a name
            # still missing is a typo the spec could not catch (a metric that does not declare
            # its outputs); failing here beats silently evaluating the last weights.
            logged = sorted(k for k in metrics if k.startswith("val"))
            raise ValueError(f"train.select.by '{self.by}' was never logged during training "
                             f"(logged: {', '.join(logged)}); fix the name or the validation split")
        if metrics["epoch"] < self.first_epoch or v is None or not math.isfinite(float(v)):
            return
        self.last = float(v)
        if not self.better(self.last):
            return
        self.epoch, self.value = int(metrics["epoch"]), float(v)
        self.weights = {k: t.detach().clone() for k, t in self.model.state_dict().items()}

    def state(self) -> dict:
        """What a training checkpoint keeps of the selection."""
        return {"epoch": self.epoch, "value": self.value, "last": self.last, "model": self.weights}

    def wrap(self, on_epoch: Callable) -> Callable:
        """fit's epoch callback: observe the epoch's row (after the metrics taken during
        training have joined it), then report, with the selection inside the checkpoint."""
        def hooked(metrics: dict, get_state: Callable[[], dict]) -> None:
            self.observe(metrics)
            on_epoch(metrics, lambda: {**get_state(), "select": self.state()})
        return hooked

    def load_best(self) -> dict:
        """Put the selected weights into the model; returns the record for trials.parquet:
        `selected_epoch` (1-based, compare with `epochs_run`), `selected_value` (`by` there),
        `selected_last_value` (`by` at the last epoch), `selected_by`. No finite value ever
        logged (an empty validation split): the last weights stay and `selected_epoch` is None."""
        if self.weights is None:
            print(f"raystudy: train.select.by '{self.by}' was never logged with a finite value; "
                  "evaluating the last epoch's weights", flush=True)
        else:
            self.model.load_state_dict(self.weights)
        return {"selected_epoch": self.epoch, "selected_value": self.value, "selected_by": self.by,
                "selected_last_value": self.last}
