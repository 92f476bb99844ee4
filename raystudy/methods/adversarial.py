"""Adversarial training: PGD-AT (Madry et al., 2018), FGSM-AT (Goodfellow et al., 2015), its
random-init variant FGSM-RS (Wong, Rice, Kolter, "Fast is better than free", 2020) and
adversarially augmented training (a clean/adversarial mixture per batch, Kurakin et al., 2017;
the "adversarially augmented training" baseline of Roth et al., SGR).

The attacks here are the training-time ones: batched, on the device, generated in eval mode
on the current weights (the model's mode is restored after), gradients taken with respect to
the input only so no parameter gradient leaks into the optimizer step.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import BeforeValidator, Field
from torch import nn

from ..registry import METHODS, Options
from ..spec.types import Eps, Number
from ..metrics.base import evaluation_mode
from .base import Method, TrainState, warmed_eps

# YAML reads a bare `true` as a boolean; it means the true labels here.
Labels = Annotated[Literal["true", "predicted"], BeforeValidator(lambda v: "true" if v is True else v)]


@torch.no_grad()
def predicted_labels(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's most likely labels: attacking them instead of the true ones avoids label
    leaking (Kurakin et al., 2017; the SGR paper's adversarially augmented training)."""
    with evaluation_mode(model):
        return model(x).argmax(1)


def attack_labels(model: nn.Module, x: torch.Tensor, y: torch.Tensor, labels: str) -> torch.Tensor:
    return predicted_labels(model, x) if labels == "predicted" else y


def input_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """∇ₓ Σₙ CE(f(xₙ), yₙ): per-example input gradients of one batch, no parameter grads."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        loss = F.cross_entropy(model(x), y, reduction="sum")
        return torch.autograd.grad(loss, x)[0].detach()


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """x + ε·sign(∇ₓℓ), clipped to [0, 1] (Goodfellow et al., 2015). Eval mode, detached."""
    if eps == 0:
        return x.detach()
    with evaluation_mode(model):
        g = input_grad(model, x, y)
    return (x.detach() + eps * g.sign()).clamp_(0.0, 1.0)


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, step_size: float, steps: int,
        random_start: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
    """ℓ∞ PGD of Madry et al.: optional uniform random start in the ε-ball (clipped to [0, 1]),
    `steps` signed gradient steps, each followed by projection onto the ε-ball ∩ [0, 1]. Eval
    mode, detached.

    The evaluation's PGD (raystudy.attacks, torchattacks.PGD) computes the same iterates from
    the same start with the same ε, step and steps (tests/test_methods.py pins it; the random
    start matches too when `generator` and torchattacks' global RNG are seeded alike). Only
    the defaults differ: training (PGDOptions) takes 40 steps of 0.01 with a random start;
    evaluation takes 10 steps (`steps`) of 2.5·ε/steps (`alpha`) with a random start."""
    x = x.detach()
    if eps == 0 or steps == 0:
        return x
    with evaluation_mode(model):
        if random_start:
            noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x_adv = (x + (2 * noise - 1) * eps).clamp_(0.0, 1.0)
        else:
            x_adv = x.clone()
        for _ in range(steps):
            g = input_grad(model, x_adv, y)
            x_adv = x_adv + step_size * g.sign()
            x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp_(0.0, 1.0)
    return x_adv.detach()


class PGDOptions(Options):
    """Madry et al.'s MNIST setting by default: ε 0.3, 40 steps of 0.01, random start."""

    eps: Eps = 0.3
    step_size: Number = Field(0.01, gt=0)
    steps: int = Field(40, ge=1)
    random_start: bool = True
    labels: Labels = "true"
    # Not in Madry et al.: ε ramps up linearly over the stage's first epochs (0 = off).
    eps_warmup_epochs: int = Field(0, ge=0)


class FGSMOptions(Options):
    """Goodfellow et al. (Sec. 6): CE on a mix of clean and FGSM inputs with clean weight
    α = 0.5, the step equal to ε. `random_init` starts the step from a uniform point of the
    ε-ball (Wong et al.'s FGSM-RS, whose step is 1.25·ε)."""

    eps: Eps = 0.3
    labels: Labels = "true"
    clean_weight: float = Field(0.5, ge=0.0, le=1.0)
    random_init: bool = False
    # The signed-gradient step (default ε, or 1.25·ε with random_init); pixel units.
    alpha: Number | None = Field(None, gt=0)

    def step(self) -> float:
        if self.alpha is not None:
            return float(self.alpha)
        return 1.25 * float(self.eps) if self.random_init else float(self.eps)


class FGSMRSOptions(FGSMOptions):
    """Wong et al.'s FGSM-RS ("Fast is better than free", 2020): uniform start in the ε-ball,
    one step of α = 1.25·ε, trained on the adversarial examples only."""

    clean_weight: float = Field(0.0, ge=0.0, le=1.0)
    random_init: bool = True


class MixedOptions(Options):
    """`fraction` of each batch is replaced by adversarial examples (Kurakin et al. use 0.5);
    `steps`, `step_size` and `random_start` apply to attack: pgd."""

    attack: Literal["fgsm", "pgd"] = "fgsm"
    fraction: float = Field(0.5, ge=0.0, le=1.0)
    eps: Eps = 0.3
    step_size: Number = Field(0.01, gt=0)
    steps: int = Field(40, ge=1)
    random_start: bool = True
    # The SGR paper attacks the predicted labels during adversarially augmented training.
    labels: Labels = "predicted"


def _ce_logs(logits: torch.Tensor, y: torch.Tensor, name: str) -> tuple[torch.Tensor, dict]:
    loss = F.cross_entropy(logits, y)
    return loss, {name: (logits.argmax(1) == y).float().mean().detach()}


@METHODS.register("pgd_at", PGDOptions)
class PGDAT(Method):
    """PGD adversarial training (Madry et al., "Towards Deep Learning Models Resistant to
    Adversarial Attacks", 2018): minimize CE on the PGD adversarial example of each input."""

    def __init__(self, options, info=None):
        super().__init__(options, info)
        self.current_eps = float(options.eps)

    def on_epoch_start(self, model, state: TrainState) -> None:
        self.current_eps = warmed_eps(self.options.eps, self.options.eps_warmup_epochs, state.stage_epoch)

    def loss(self, model, x, y, state):
        o = self.options
        x_adv = pgd(model, x, attack_labels(model, x, y, o.labels), self.current_eps, o.step_size, o.steps,
                    o.random_start, state.generator)
        return _ce_logs(model(x_adv), y, "train_adv_acc")

    def epoch_log(self):
        return {"method.eps": self.current_eps}


@METHODS.register("fgsm_at", FGSMOptions)
class FGSMAT(Method):
    """FGSM adversarial training (Goodfellow et al., "Explaining and Harnessing Adversarial
    Examples", 2015, Sec. 6): α·CE(f(x), y) + (1 − α)·CE(f(x + ε·sign(∇ₓℓ)), y) with α =
    `clean_weight` (0.5 in the paper). With `random_init` the step α_step·sign(∇ℓ) starts at a
    uniform point of the ε-ball and is projected back onto it (Wong et al., 2020)."""

    def adversarial(self, model, x, y, state) -> torch.Tensor:
        o = self.options
        ya = attack_labels(model, x, y, o.labels)
        # One PGD step is FGSM: from x with step ε, or from a uniform start (FGSM-RS).
        return pgd(model, x, ya, float(o.eps), o.step(), 1, o.random_init, state.generator)

    def loss(self, model, x, y, state):
        w = float(self.options.clean_weight)
        if w == 1.0:
            return _ce_logs(model(x), y, "train_acc")
        loss, logs = _ce_logs(model(self.adversarial(model, x, y, state)), y, "train_adv_acc")
        if w == 0.0:
            return loss, logs
        # Two forwards, not one concatenated batch: BatchNorm statistics stay per half, as in
        # the paper's sum of two losses.
        clean, clean_logs = _ce_logs(model(x), y, "train_acc")
        return w * clean + (1 - w) * loss, {**logs, **clean_logs}

    def epoch_log(self):
        return {"method.eps": float(self.options.eps), "method.clean_weight": float(self.options.clean_weight),
                "method.alpha": self.options.step()}


@METHODS.register("fgsm_rs", FGSMRSOptions)
class FGSMRS(FGSMAT):
    """FGSM with a random start (Wong, Rice, Kolter, "Fast is better than free: Revisiting
    adversarial training", ICLR 2020): δ ~ U[−ε, ε], δ ← Π_ε(δ + 1.25·ε·sign(∇δ ℓ(x + δ))),
    x + δ clipped to [0, 1]; CE on x + δ only (clean_weight 0)."""


@METHODS.register("mixed", MixedOptions)
class Mixed(Method):
    """Adversarially augmented training (Kurakin et al., 2017; Roth et al., SGR, Sec. 4.1 (iii)):
    a fixed fraction of every batch is replaced by its adversarial examples, the rest stays clean,
    and CE is averaged over the whole mixed batch."""

    def loss(self, model, x, y, state):
        o = self.options
        k = int(round(o.fraction * x.shape[0]))
        if k == 0:
            return _ce_logs(model(x), y, "train_acc")
        xa, ya = x[:k], attack_labels(model, x[:k], y[:k], o.labels)
        if o.attack == "pgd":
            adv = pgd(model, xa, ya, o.eps, o.step_size, o.steps, o.random_start, state.generator)
        else:
            adv = fgsm(model, xa, ya, o.eps)
        # The loop shuffles every epoch, so taking the batch head picks a random subset.
        return _ce_logs(model(torch.cat([adv, x[k:]])), y, "train_acc")

    def epoch_log(self):
        return {"method.eps": float(self.options.eps), "method.fraction": float(self.options.fraction)}
