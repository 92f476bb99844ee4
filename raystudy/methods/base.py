"""The method interface."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class TrainState:
    """What the loop tells a method at the start of each epoch.

    `augment` is the AugmentSpec in force for this epoch; a curriculum method may
    replace it (e.g. widen the rotation range) and the loop uses what it sets.
    """

    epoch: int                   # global epoch, 0-based, across stages
    stage_epoch: int             # epoch within the current stage
    lr: float
    lr_stepped: bool             # the schedule changed the lr since the last epoch
    milestone_index: int         # how many lr steps have happened in this stage
    augment: Any
    device: torch.device
    generator: torch.Generator | None = None
    extra: dict = field(default_factory=dict)


class Method:
    """Base class: natural training unless a subclass overrides `loss`."""

    def __init__(self, options, info=None):
        self.options = options
        self.info = info

    def on_epoch_start(self, model: nn.Module, state: TrainState) -> None:
        """React to the epoch (curricula change `state.augment` or their ε here)."""

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             state: TrainState) -> tuple[torch.Tensor, dict[str, float]]:
        """Return the batch loss (with graph) and 0-dim tensor (or float) logs."""
        logits = model(x)
        loss = nn.functional.cross_entropy(logits, y)
        # Logs stay tensors on the device; the loop averages them once per epoch.
        return loss, {"train_acc": (logits.argmax(1) == y).float().mean().detach()}

    def epoch_log(self) -> dict[str, float]:
        """Scalars to log each epoch (e.g. the current ε of a curriculum)."""
        return {}

    def state_dict(self) -> dict:
        """Method state to checkpoint (e.g. SGR's running covariance)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def warmed_eps(eps: float, warmup_epochs: int, stage_epoch: int) -> float:
    """ε for an epoch of a linear warm-up: epoch e (0-based, within the stage) of a k-epoch
    warm-up trains at ε·(e+1)/(k+1), then at ε. Adversarial training at a large ε from a
    random initialization can stay at chance (the MNIST ε = 0.3 PGD-AT of a few epochs does);
    a short ramp lets the clean features form first."""
    if warmup_epochs <= 0 or stage_epoch >= warmup_epochs:
        return float(eps)
    return float(eps) * (stage_epoch + 1) / (warmup_epochs + 1)
