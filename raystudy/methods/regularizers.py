"""Input-gradient regularizers: GN and SGR (Roth, Lucchi, Nowozin, Hofmann, "Adversarially
Robust Training through Structured Gradient Regularization", 2018).

    loss = E[ℓ(x, y)] + (λ/2) · E[∇ₓℓᵀ Σ ∇ₓℓ]            (SGR, Sec. 3.1; needs double backprop)

GN is Σ = I. For SGR, Σ is the exponential running average (decay β, Eq. 14) of the raw second
moments E[δδᵀ] of per-example L2-normalized adversarial perturbations δ (from the loss
gradient, its sign, FGSM or PGD). For images, Σ is stored as a covariance *function of pixel
displacement* (Eq. 16): K[c, c', Δ] = E mean_p δ[c, p]·δ[c', p + Δ], so Σ_{(c,p),(c',q)} =
K[c, c', q − p] and Σg is a convolution of g with K — never a d×d matrix. Both Σ are rescaled
so their mean diagonal entry equals the mean per-pixel variance of the training data
(Sec. 3.3), which makes λ a noise-to-signal ratio. The uncentered correction (Eq. 12) is left
out: the paper reports it small.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from ..errors import StudyError
from ..registry import METHODS, Options
from ..spec.types import Eps, Number
from ..metrics.base import evaluation_mode
from .adversarial import Labels, attack_labels, fgsm, input_grad, pgd
from .base import Method

DENSE_MAX_DIM = 4096


# ----------------------------------------------------------------- covariance function

def displacement_covariance(delta: torch.Tensor, estimator: str = "biased") -> torch.Tensor:
    """K[c, c', Δ] (shape C×C×(2H−1)×(2W−1), Δ = 0 at the centre) from perturbations (N,C,H,W).

    Each entry averages δ[c, p]·δ[c', p+Δ] over images and over the pixel pairs at that
    displacement: "unbiased" divides by the number of such pairs, "biased" by H·W. The biased
    estimate is the autocorrelation of the zero-padded signal and so always gives a positive
    semi-definite Σ (a penalty that cannot go negative); the unbiased one weights long
    displacements, seen by few pairs, as much as short ones but may lose definiteness.
    """
    n, c, h, w = delta.shape
    fh, fw = 2 * h - 1, 2 * w - 1
    # Zero-padding to (2H−1, 2W−1) makes the FFT's circular correlation the linear one.
    f = torch.fft.rfft2(delta.double(), s=(fh, fw))
    cross = torch.einsum("nchw,ndhw->cdhw", f.conj(), f)
    r = torch.fft.irfft2(cross, s=(fh, fw))
    r = torch.roll(r, shifts=(h - 1, w - 1), dims=(2, 3))
    if estimator == "unbiased":
        dr = torch.arange(fh, device=delta.device) - (h - 1)
        dc = torch.arange(fw, device=delta.device) - (w - 1)
        count = (h - dr.abs())[:, None] * (w - dc.abs())[None, :]
        r = r / count
    else:
        r = r / (h * w)
    return (r / n).to(delta.dtype)


def apply_displacement(k: torch.Tensor, g: torch.Tensor, method: str = "auto") -> torch.Tensor:
    """Σg with Σ_{(c,p),(c',q)} = K[c, c', q − p]: the cross-correlation of g with K, zero
    outside the image. K may be cropped to a radius r (shape (2r+1)×(2r+1)).

    Small kernels run as conv2d; the full (2H−1)×(2W−1) kernel runs through the FFT (the
    direct convolution costs H·W·(2H−1)·(2W−1) per image and dominates the training step).
    """
    ph, pw = (k.shape[2] - 1) // 2, (k.shape[3] - 1) // 2
    k = k.to(g.dtype)
    if method == "conv" or (method == "auto" and max(ph, pw) <= 3):
        return F.conv2d(g, k, padding=(ph, pw))
    h, w = g.shape[2], g.shape[3]
    # out[p] = Σ_q K[q − p] g[q] is the full linear convolution of g with the flipped kernel,
    # read at offset (ph, pw); an FFT of size ≥ H + 2·ph keeps it from wrapping around.
    sh, sw = h + 2 * ph, w + 2 * pw
    kf = torch.fft.rfft2(torch.flip(k, dims=(2, 3)), s=(sh, sw))
    gf = torch.fft.rfft2(g, s=(sh, sw))
    full = torch.fft.irfft2(torch.einsum("cdhw,ndhw->nchw", kf, gf), s=(sh, sw))
    return full[:, :, ph:ph + h, pw:pw + w]


def crop_radius(k: torch.Tensor, radius: int | None) -> torch.Tensor:
    ch, cw = (k.shape[2] - 1) // 2, (k.shape[3] - 1) // 2
    if radius is None or radius >= max(ch, cw):
        return k
    rh, rw = min(radius, ch), min(radius, cw)
    return k[:, :, ch - rh:ch + rh + 1, cw - rw:cw + rw + 1]


def dense_from_displacement(k: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The d×d matrix a covariance function stands for (for tests and small images only)."""
    c = k.shape[0]
    ch, cw = (k.shape[2] - 1) // 2, (k.shape[3] - 1) // 2
    rows = torch.arange(h).repeat_interleave(w)
    cols = torch.arange(w).repeat(h)
    dr = rows[None, :] - rows[:, None] + ch          # q − p, shifted to kernel indices
    dc = cols[None, :] - cols[:, None] + cw
    inside = (dr >= 0) & (dr < k.shape[2]) & (dc >= 0) & (dc < k.shape[3])
    dense = torch.zeros(c, h * w, c, h * w, dtype=k.dtype, device=k.device)
    for a in range(c):
        for b in range(c):
            blk = k[a, b][dr.clamp(0, k.shape[2] - 1), dc.clamp(0, k.shape[3] - 1)]
            dense[a, :, b, :] = blk * inside
    return dense.reshape(c * h * w, c * h * w)


def identity_displacement(c: int, h: int, w: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """The covariance function of Σ = I: a unit impulse at Δ = 0 on the channel diagonal."""
    k = torch.zeros(c, c, 2 * h - 1, 2 * w - 1, device=device, dtype=dtype)
    k[torch.arange(c), torch.arange(c), h - 1, w - 1] = 1.0
    return k


def normalized(delta: torch.Tensor) -> torch.Tensor:
    """Per-example unit L2 norm (all-zero perturbations stay zero)."""
    norm = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
    return delta / norm.view(-1, *([1] * (delta.dim() - 1)))


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
        x = x.detach().requires_grad_(True)
        logits = model(x)
        ce = F.cross_entropy(logits, y, reduction="none")
        # create_graph: the penalty's own gradient (double backprop) trains the weights.
        g = torch.autograd.grad(ce.sum(), x, create_graph=True)[0]
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
    running raw second moments of normalized adversarial perturbations, as a displacement
    covariance function applied by convolution (or a dense matrix for small inputs)."""

    def __init__(self, options, info=None):
        super().__init__(options, info)
        self.sigma: torch.Tensor | None = None     # K (displacement) or M (dense), unscaled
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

    def prepare(self, model, x, y, state) -> None:
        o = self.options
        if o.covariance == "identity":
            if self.sigma is None:
                n, c, h, w = x.shape
                k = identity_displacement(c, h, w, x.device)
                self.sigma = (torch.eye(c * h * w, device=x.device) if o.form == "dense"
                              else crop_radius(k, o.radius))
            return
        if self.sigma is None or self.steps % o.update_every == 0:
            batch = self.estimate(self.perturbations(model, x, y, state))
            self.sigma = batch if self.sigma is None else o.decay * self.sigma + (1 - o.decay) * batch
        self.steps += 1

    def mean_diagonal(self) -> torch.Tensor:
        if self.options.form == "dense":
            return self.sigma.diagonal().mean()
        ch, cw = (self.sigma.shape[2] - 1) // 2, (self.sigma.shape[3] - 1) // 2
        return self.sigma[:, :, ch, cw].diagonal().mean()

    def scaled_sigma(self) -> torch.Tensor:
        if self.options.scale == "none":
            return self.sigma
        return self.sigma * (self.data_var / self.mean_diagonal().clamp_min(1e-30))

    def apply_sigma(self, g: torch.Tensor) -> torch.Tensor:
        s = self.scaled_sigma()
        if self.options.form == "dense":
            return (g.flatten(1) @ s.to(g.dtype)).view_as(g)    # Σ is symmetric
        return apply_displacement(s, g)

    def epoch_log(self):
        out = super().epoch_log()
        if self.sigma is not None and self.options.form == "displacement":
            ch, cw = (self.sigma.shape[2] - 1) // 2, (self.sigma.shape[3] - 1) // 2
            diag = self.sigma[:, :, ch, cw].diagonal().mean()
            if cw >= 1:
                # Neighbour correlation: how short-range the adversarial structure is.
                out["method.sigma_corr1"] = float(self.sigma[:, :, ch, cw + 1].diagonal().mean() / diag)
        return out

    def state_dict(self):
        return {**super().state_dict(), "sigma": self.sigma, "steps": self.steps}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        if state:
            self.sigma = state.get("sigma")
            self.steps = int(state.get("steps", 0))
