"""CuSP: Curriculum based Spatial-Adversarial Robustness training for Pareto-Optimality
(Kamath et al., "On the trade-off between spatial and adversarial robustness", Algorithm 1).

Each time the learning rate steps (or at explicit `milestones`), the curriculum moves to its
next (θ, ε) pair: inputs are randomly rotated in [−θ, θ] (nearest neighbour, black fill; the
loop's augmentation, widened here) and adversarially trained at ε with PGD or TRADES. On
CIFAR-10: milestones 75/90/100 with (120°, 2/255) → (150°, 4/255) → (180°, 8/255), PGD 10 steps
of 2/255 with a random start; the last pair stays after the last listed step. A warm start
("PGD → CuSP", "Aug 180 → CuSP") is `train.stages` or `train.init_from`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ..registry import METHODS, Options
from ..spec.types import Angle, Eps, Number
from .adversarial import Labels, _ce_logs, attack_labels, pgd
from .base import Method, TrainState
from .trades import trades_attack, trades_loss


class CuspOptions(Options):
    rotations: list[Angle] = Field(default_factory=lambda: [120.0, 150.0, 180.0], min_length=1)
    eps: list[Eps] = Field(default_factory=lambda: [2 / 255, 4 / 255, 8 / 255], min_length=1)
    # Optional translation range per curriculum step (pixels), for Aug-RT curricula.
    translations: list[int] | None = None
    # Epochs (within the stage) at which to step; default: whenever the lr schedule steps.
    milestones: list[int] | None = None
    inner: Literal["pgd", "trades"] = "pgd"
    step_size: Number = Field(2 / 255, gt=0)
    steps: int = Field(10, ge=1)
    random_start: bool = True
    labels: Labels = "true"
    # TRADES β (the CuSP paper uses 1/λ = 5).
    beta: float = Field(5.0, ge=0)

    @model_validator(mode="after")
    def _same_length(self):
        n = len(self.rotations)
        if len(self.eps) != n:
            raise ValueError(f"rotations has {n} entries but eps has {len(self.eps)}: "
                             "one (θ, ε) pair per curriculum step")
        if self.translations is not None and len(self.translations) != n:
            raise ValueError(f"translations has {len(self.translations)} entries, rotations {n}")
        if self.milestones is not None:
            if sorted(self.milestones) != list(self.milestones) or any(m < 1 for m in self.milestones):
                raise ValueError("milestones must be increasing epoch numbers >= 1")
        return self


@METHODS.register("cusp", CuspOptions)
class Cusp(Method):
    """CuSP (Kamath et al.): (θ, ε) grow together at each learning-rate milestone; adversarial
    training (PGD or TRADES) on inputs randomly rotated within the current range."""

    def __init__(self, options, info=None):
        super().__init__(options, info)
        self.index = 0

    def step_index(self, state: TrainState) -> int:
        o = self.options
        if o.milestones is not None:
            k = sum(1 for m in o.milestones if state.stage_epoch >= m)
        else:
            k = state.milestone_index
        return min(k, len(o.rotations) - 1)

    @property
    def theta(self) -> float:
        return float(self.options.rotations[self.index])

    @property
    def eps(self) -> float:
        return float(self.options.eps[self.index])

    def on_epoch_start(self, model, state: TrainState) -> None:
        self.index = self.step_index(state)
        update = {"rotation": self.theta}
        if self.options.translations is not None:
            update["translation"] = int(self.options.translations[self.index])
        state.augment = state.augment.model_copy(update=update)

    def loss(self, model, x, y, state):
        o = self.options
        if o.inner == "trades":
            x_adv = trades_attack(model, x, self.eps, o.step_size, o.steps, generator=state.generator)
            loss, nat, rob, logits = trades_loss(model, x, y, x_adv, o.beta)
            return loss, {"train_acc": (logits.argmax(1) == y).float().mean().detach(),
                          "trades.robust": rob.detach()}
        x_adv = pgd(model, x, attack_labels(model, x, y, o.labels), self.eps, o.step_size, o.steps,
                    o.random_start, state.generator)
        return _ce_logs(model(x_adv), y, "train_adv_acc")

    def epoch_log(self):
        return {"method.theta": self.theta, "method.eps": self.eps, "method.curriculum_step": float(self.index)}

    def state_dict(self):
        return {"index": self.index}

    def load_state_dict(self, state):
        if state:
            self.index = int(state.get("index", 0))
