"""Input-gradient regularizers: GN and SGR (Roth, Lucchi, Nowozin, Hofmann, "Adversarially
Robust Training through Structured Gradient Regularization", 2018).

    loss = E[ℓ(x, y)] + (λ/2) · E[∇ₓℓᵀ Σ ∇ₓℓ]            (SGR, Sec. 3.1; needs double backprop)

GN is Σ = I. For SGR, Σ is the exponential running average (decay β, Eq. 14) of the raw second
moments E[δδᵀ] of per-example L2-normalized adversarial perturbations δ (from the loss
gradient, its sign, FGSM or PGD). For images, Σ is stored as a covariance *function of pixel
displacement* (Eq. 16): K[c, c', Δ] = E mean_p δ[c, p]·δ[c', p + Δ], so Σ_{(c,p),(c',q)} =
K[c, c', q − p] and Σg is a convolution of g with K — never a d×d matrix (raystudy.covariance,
shared with the `perturbation_covariance` metric). Both Σ are rescaled so their mean diagonal
entry equals the mean per-pixel variance of the training data (Sec. 3.3), which makes λ a
noise-to-signal ratio.

`center: true` subtracts the running mean perturbation μ (Σ = E[δδᵀ] − μμᵀ, the covariance of
the zero-mean noise the derivation assumes, Eq. 5); the default keeps the paper's raw moments
(Eq. 14–15, footnote 4). The uncentred regularizer's extra term (Eq. 12) is left out either
way: the paper reports it small. A cropped (`radius`) or unbiased K can stand for an
indefinite Σ; it is projected onto the PSD cone (covariance.project_psd) before use.

The penalty's input gradients are per example: BatchNorm layers take them with their running
statistics, since in train mode the batch statistics make example i's gradient depend on
example j.
"""

from __future__ import annotations

import contextlib
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn

from ..covariance import (apply_displacement, crop_radius, dense_from_displacement,  # noqa: F401
                          displacement_covariance, identity_displacement, mean_term, normalized, project_psd)
from ..errors import StudyError
from ..registry import METHODS, Options
from ..spec.types import Eps, Number
from ..metrics.base import evaluation_mode
from .adversarial import Labels, attack_labels, fgsm, input_grad, pgd
from .base import Method

DENSE_MAX_DIM = 4096


# ------------------------------------------------------------------- per-example gradients

def _batchnorms(model: nn.Module) -> list[nn.Module]:
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if any(not m.track_running_stats for m in bns):
        raise StudyError("the model has a BatchNorm layer without running statistics, so its input "
                         "gradients mix the examples of a batch in every mode",
                         path="train.method", expected="a model without BatchNorm, or BatchNorm with "
                         "running statistics", hint="use a natural or adversarial training method for it")
    return [m for m in bns if m.training]


@contextlib.contextmanager
def batchnorm_running_stats(model: nn.Module):
    """BatchNorm layers normalize with their running statistics (each example on its own);
    every other layer keeps its mode (escnn's R2Conv must not switch to eval, see PITFALLS).

    The graph built here keeps copies of the statistics: the train-mode forward that follows
    updates the buffers in place, and the double backprop would otherwise read the updated
    values, which hold the whole batch."""
    bns = _batchnorms(model)
    saved = [(m.running_mean, m.running_var) for m in bns]
    for m, (mean, var) in zip(bns, saved):
        m.running_mean, m.running_var = mean.clone(), var.clone()
        m.train(False)
    try:
        yield model
    finally:
        for m, (mean, var) in zip(bns, saved):
            m.running_mean, m.running_var = mean, var
            m.train(True)


def penalty_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    """(logits, per-example CE, ∇ₓ CE(f(xₙ), yₙ) with graph for double backprop).

    With BatchNorm in train mode, ∂(Σₙ CEₙ)/∂xᵢ also holds the other examples' losses through
    the batch mean and variance; the penalty's gradients then come from a second forward with
    the running statistics (the function the attacks and the evaluation see), while the CE
    and the running statistics' update come from the usual train-mode forward. The penalty's
    forward runs first, so the statistics it uses hold nothing of this batch."""
    bns = _batchnorms(model)
    xg = x.detach().requires_grad_(True)
    if bns:
        with batchnorm_running_stats(model):
            ce_g = F.cross_entropy(model(xg), y, reduction="none")
        logits = model(x.detach())
        ce = F.cross_entropy(logits, y, reduction="none")
    else:
        logits = model(xg)
        ce = ce_g = F.cross_entropy(logits, y, reduction="none")
    # create_graph: the penalty's own gradient (double backprop) trains the weights.
    return logits, ce, torch.autograd.grad(ce_g.sum(), xg, create_graph=True)[0]


# --------------------------------------------------------------------------- methods

class GNOptions(Options):
    # λ of the paper; with scale: data it is a noise-to-signal ratio.
    strength: float = Field(1.0, ge=0)
    # data: Σ's mean diagonal = mean per-pixel variance of the training batches (Sec. 3.3).
    scale: Literal["data", "none"] = "data"


class SGROptions(GNOptions):
    source: Literal["gradient", "sign", "fgsm", "pgd"] = "sign"
    eps: Eps = 0.3                                   # fgsm / pgd only
    step_size: Number = Field(0.01, gt=0)            # pgd only
    steps: int = Field(10, ge=1)                     # pgd only
    random_start: bool = True
    # The SGR paper builds its perturbations on the predicted labels (no label leaking).
    labels: Labels = "predicted"
    # β of Eq. 14; the paper's value is not in our copy of the text.
    decay: float = Field(0.9, ge=0.0, lt=1.0)
    form: Literal["displacement", "dense"] = "displacement"
    # Keep |Δ| <= radius pixels only (None: every displacement in the image).
    radius: int | None = Field(None, ge=0)
    estimator: Literal["biased", "unbiased"] = "biased"
    # The paper notes Σ need not be re-estimated every step once it is good.
    update_every: int = Field(1, ge=1)
    # identity: Σ = I through the same convolution (SGR then equals GN; a check).
    covariance: Literal["estimated", "identity"] = "estimated"
    # true: Σ = E[δδᵀ] − μμᵀ (running mean μ); false: the paper's raw second moments.
    center: bool = False

    @field_validator("center")
    @classmethod
    def _center_needs_an_estimate(cls, v: bool, info):
        if v and info.data.get("covariance") == "identity":
            raise ValueError("center: true subtracts the mean perturbation from an estimated Σ, "
                             "but covariance: identity estimates none (remove center or the identity)")
        return v


@METHODS.register("gn", GNOptions)
class GradientNorm(Method):
    """Gradient-norm regularization, SGR with Σ = I (Roth et al., 2018, Sec. 4.1 (iv)):
    CE + (λ/2)·E‖∇ₓℓ‖² (times the data scale when scale: data)."""

    def __init__(self, options, info=None):
        super().__init__(options, info)
        self.data_var: torch.Tensor | None = None

    def _update_scale(self, x: torch.Tensor, decay: float = 0.9) -> None:
        v = x.detach().float().var(dim=0, unbiased=False).mean()
        self.data_var = v if self.data_var is None else decay * self.data_var + (1 - decay) * v

    def scale(self) -> torch.Tensor | float:
        return self.data_var if self.options.scale == "data" else 1.0

    def apply_sigma(self, g: torch.Tensor) -> torch.Tensor:
        return g * self.scale()

    def prepare(self, model, x, y, state) -> None:
        """Hook before the penalty (SGR refreshes Σ here)."""

    def loss(self, model, x, y, state):
        self._update_scale(x)
        self.prepare(model, x, y, state)
        logits, ce, g = penalty_gradients(model, x, y)
        quad = (g * self.apply_sigma(g)).flatten(1).sum(1)
        reg = 0.5 * self.options.strength * quad.mean()
        return ce.mean() + reg, {"train_acc": (logits.argmax(1) == y).float().mean().detach(),
                                 "reg": reg.detach(), "grad_norm": g.detach().flatten(1).norm(dim=1).mean()}

    def epoch_log(self):
        return {"method.strength": float(self.options.strength),
                "method.data_variance": float(self.data_var) if self.data_var is not None else float("nan")}

    def state_dict(self):
        return {"data_var": self.data_var}

    def load_state_dict(self, state):
        if state:
            self.data_var = state.get("data_var")


@METHODS.register("sgr", SGROptions)
class StructuredGradient(GradientNorm):
    """Structured gradient regularization (Roth et al., 2018): CE + (λ/2)·E[∇ₓℓᵀ Σ ∇ₓℓ] with Σ the
    running raw second moments (or, with center, the covariance) of normalized adversarial
    perturbations, as a displacement covariance function applied by convolution (or a dense
    matrix for small inputs), made positive semi-definite and rescaled to the data's variance."""

    def __init__(self, options, info=None):
        super().__init__(options, info)
        self.sigma: torch.Tensor | None = None     # running raw moments: K (displacement) or M (dense)
        self.mean: torch.Tensor | None = None      # running mean of the normalized perturbations
        self.effective: torch.Tensor | None = None  # the Σ the penalty uses, before rescaling
        self.min_eig = float("nan")                # smallest eigenvalue before the PSD projection
        self.hw: tuple[int, int] | None = None
        self.steps = 0
        if info is not None and options.form == "dense":
            d = info.channels * info.height * info.width
            if d > DENSE_MAX_DIM:
                raise StudyError(f"a dense Σ for {d}-dimensional inputs needs a {d}×{d} matrix",
                                 path="train.method.form", expected="displacement",
                                 hint=f"form: dense is for inputs of at most {DENSE_MAX_DIM} values")

    def perturbations(self, model, x, y, state) -> torch.Tensor:
        o = self.options
        ya = attack_labels(model, x, y, o.labels)
        if o.source == "pgd":
            return pgd(model, x, ya, o.eps, o.step_size, o.steps, o.random_start, state.generator) - x
        if o.source == "fgsm":
            return fgsm(model, x, ya, o.eps) - x
        with evaluation_mode(model):
            g = input_grad(model, x, ya)
        return g if o.source == "gradient" else g.sign()

    def estimate(self, delta: torch.Tensor) -> torch.Tensor:
        """This batch's raw second moments of the normalized perturbations."""
        delta = normalized(delta.detach().float())
        if self.options.form == "dense":
            flat = delta.flatten(1)
            return flat.T @ flat / flat.shape[0]
        return crop_radius(displacement_covariance(delta, self.options.estimator), self.options.radius)

    def _blend(self, old: torch.Tensor | None, new: torch.Tensor) -> torch.Tensor:
        return new if old is None else self.options.decay * old + (1 - self.options.decay) * new

    def prepare(self, model, x, y, state) -> None:
        o = self.options
        self.hw = (x.shape[2], x.shape[3])
        if o.covariance == "identity":
            if self.sigma is None:
                n, c, h, w = x.shape
                k = identity_displacement(c, h, w, x.device)
                self.sigma = (torch.eye(c * h * w, device=x.device) if o.form == "dense"
                              else crop_radius(k, o.radius))
            self.effective = self.sigma
            return
        if self.sigma is None or self.steps % o.update_every == 0:
            delta = self.perturbations(model, x, y, state)
            self.sigma = self._blend(self.sigma, self.estimate(delta))
            self.mean = self._blend(self.mean, normalized(delta.detach().float()).mean(0))
            self.effective = None
        self.steps += 1
        if self.effective is None:
            self.effective = self._effective()

    def _effective(self) -> torch.Tensor:
        o = self.options
        s = self.sigma
        if o.center and self.mean is not None:
            if o.form == "dense":
                m = self.mean.flatten()
                s = s - torch.outer(m, m)
            else:
                s = s - mean_term(self.mean, o.estimator, o.radius).to(s.dtype)
        if o.form == "dense":
            # Raw moments are PSD, and so is their running average minus the running mean's
            # outer product (Jensen): no projection needed.
            return s
        s, self.min_eig = project_psd(s, *self.hw)
        return s

    def mean_energy_fraction(self) -> float:
        """‖μ‖² / tr E[δδᵀ] of the running estimates (trace 1 for normalized perturbations)."""
        if self.mean is None or self.sigma is None:
            return float("nan")
        if self.options.form == "dense":
            trace = self.sigma.diagonal().sum()
        else:
            ch, cw = (self.sigma.shape[2] - 1) // 2, (self.sigma.shape[3] - 1) // 2
            trace = self.sigma[:, :, ch, cw].diagonal().sum() * self.mean[0].numel()
        return float(self.mean.double().square().sum() / trace.double().clamp_min(1e-300))

    def mean_diagonal(self) -> torch.Tensor:
        s = self.effective
        if self.options.form == "dense":
            return s.diagonal().mean()
        ch, cw = (s.shape[2] - 1) // 2, (s.shape[3] - 1) // 2
        return s[:, :, ch, cw].diagonal().mean()

    def scaled_sigma(self) -> torch.Tensor:
        if self.options.scale == "none":
            return self.effective
        return self.effective * (self.data_var / self.mean_diagonal().clamp_min(1e-30))

    def apply_sigma(self, g: torch.Tensor) -> torch.Tensor:
        s = self.scaled_sigma()
        if self.options.form == "dense":
            return (g.flatten(1) @ s.to(g.dtype)).view_as(g)    # Σ is symmetric
        return apply_displacement(s, g)

    def epoch_log(self):
        out = super().epoch_log()
        s = self.effective
        if self.options.covariance == "estimated":
            out["method.mean_energy_fraction"] = self.mean_energy_fraction()
            if s is not None and self.options.form == "displacement":
                # < 0: the (cropped or unbiased) estimate was indefinite and got projected.
                out["method.sigma_min_eig"] = self.min_eig / float(self.mean_diagonal().clamp_min(1e-30))
        if s is not None and self.options.form == "displacement":
            ch, cw = (s.shape[2] - 1) // 2, (s.shape[3] - 1) // 2
            if cw >= 1:
                # Neighbour correlation: how short-range the adversarial structure is.
                out["method.sigma_corr1"] = float(s[:, :, ch, cw + 1].diagonal().mean() / self.mean_diagonal())
        return out

    def state_dict(self):
        return {**super().state_dict(), "sigma": self.sigma, "mean": self.mean, "steps": self.steps}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        if state:
            self.sigma = state.get("sigma")
            self.mean = state.get("mean")
            self.steps = int(state.get("steps", 0))
            self.effective = None
