"""The geometry of perturbations: PCA of adversarial vs rotation perturbations
(invariance vs robustness), the covariance function of adversarial perturbations and
long-range-correlated noise (structured gradient regularization, SGR).
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Literal

import torch
from pydantic import Field, model_validator

from ..attacks import attack
from ..covariance import mean_energy_fraction, pooled_covariance_function
from ..registry import METRICS
from ..spec.types import Angle, Eps
from .base import Metric, MetricOptions, MetricResult, Run
from .universal import attack_directions, transform_perturbations

PerturbationAttack = Literal["pgd", "fgsm", "gradient", "deepfool"]


class _AttackOptions(MetricOptions):
    attack: PerturbationAttack = "pgd"
    eps: Eps = 0.1
    steps: int = Field(20, ge=1)
    alpha: Eps | None = Field(None, description="PGD step size (default 2.5 * eps / steps, Madry et al.)")
    n: int = Field(500, ge=2)
    split: Literal["test", "val"] = "test"


def adversarial_perturbations(model, x, y, o: _AttackOptions, seed: int, batch_size: int = 500) -> torch.Tensor:
    """x_adv - x for the declared attack (L∞ FGSM / PGD from torchattacks; gradient and
    DeepFool directions as in SVD-Universal)."""
    if o.attack in ("gradient", "deepfool"):
        return attack_directions(model, x, y, o.attack, batch_size=batch_size)
    adv = attack(model, o.attack, x, y, o.eps, batch_size=batch_size, seed=seed,
                 **({"steps": o.steps, "alpha": o.alpha} if o.attack == "pgd" else {}))
    return adv - x


# ------------------------------------------------------------------------------ PCA

def principal_subspace(p: torch.Tensor, k: int, center: bool = True) -> tuple[torch.Tensor, float]:
    """Orthonormal basis (d, k) of the top-k principal directions of the rows of p, and the
    share of the (centred) energy they hold."""
    m = p.reshape(p.shape[0], -1).double()
    if center:
        m = m - m.mean(0, keepdim=True)
    _, s, vh = torch.linalg.svd(m, full_matrices=False)
    e = s ** 2
    return vh[:k].T, (e[:k].sum() / e.sum().clamp_min(1e-300)).item()


def principal_angles(q1: torch.Tensor, q2: torch.Tensor) -> torch.Tensor:
    """Principal angles in degrees (ascending) between span(q1) and span(q2), q (d, k):
    arccos of the singular values of Q1ᵀQ2 with Q orthonormal bases (Björck & Golub)."""
    a = torch.linalg.qr(q1.double())[0]
    b = torch.linalg.qr(q2.double())[0]
    cos = torch.linalg.svdvals(a.T @ b).clamp(0, 1)
    return torch.rad2deg(torch.arccos(cos)).sort().values


class PerturbationPCAOptions(_AttackOptions):
    rotation: Angle = Field(10.0, description="small rotations drawn in [-θ, θ]")
    translation: int = Field(0, ge=0)
    k: int = Field(10, ge=1, description="dimension of each principal subspace")
    center: bool = True
    normalize: bool = Field(True, description="unit-L2 perturbations before PCA")

    @model_validator(mode="after")
    def _check(self):
        if self.rotation == 0 and self.translation == 0:
            raise ValueError("rotation 0 and translation 0 give no spatial perturbation")
        if self.k >= self.n:
            raise ValueError(f"k={self.k} must be smaller than n={self.n}")
        return self


def _unit(p: torch.Tensor) -> torch.Tensor:
    n = p.reshape(p.shape[0], -1).norm(dim=1).clamp_min(1e-12)
    return p / n.reshape(-1, *([1] * (p.dim() - 1)))


class PerturbationPCA(Metric):
    """Principal angles between the top-k principal subspaces of adversarial perturbations
    and of small-rotation perturbations of the same inputs (Invariance vs Robustness,
    papers/invariance_vs_robustness.txt: they are nearly orthogonal).

    Curve `perturbation_pca`: x = index of the principal angle (1..k), angle in degrees,
    with the angle between two random k-subspaces of the same dimension as a reference.
    The attack's random start and the rotations are seeded by the trial's seed.
    """

    x_title = "principal angle index"

    def compute(self, run: Run, o: PerturbationPCAOptions) -> MetricResult:
        ctx, x = run.ctx, run.x
        adv = adversarial_perturbations(run.model, x, run.y, o, ctx.seed, run.batch_size)
        rot = transform_perturbations(x, o.rotation, o.translation, 1, ctx.generator(offset=13))
        if o.normalize:
            adv, rot = _unit(adv), _unit(rot)
        k = min(o.k, len(x) - 1)
        qa, ea = principal_subspace(adv, k, o.center)
        qr, er = principal_subspace(rot, k, o.center)
        angles = principal_angles(qa, qr)
        g = torch.Generator().manual_seed(ctx.seed * 7919 + 17)
        d = qa.shape[0]
        rnd = principal_angles(torch.randn(d, k, generator=g, dtype=torch.float64),
                               torch.randn(d, k, generator=g, dtype=torch.float64))
        res = MetricResult()
        for i, (a, r) in enumerate(zip(angles.tolist(), rnd.tolist()), 1):
            res.curves.append({"metric": "perturbation_pca", "x": float(i), "angle": a, "angle_random": r})
        res.scalars.update({"perturbation_pca.min_angle": angles.min().item(),
                            "perturbation_pca.mean_angle": angles.mean().item(),
                            "perturbation_pca.random_min_angle": rnd.min().item(),
                            "perturbation_pca.adversarial_energy": ea,
                            "perturbation_pca.rotation_energy": er})
        return res


perturbation_pca = METRICS.register("perturbation_pca", PerturbationPCAOptions)(PerturbationPCA())


# ---------------------------------------------------------------- covariance function

def covariance_function(z: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Stationary estimate of C(Δ) = E[z(p) z(p + Δ)] over pixel displacement Δ = (dy, dx),
    |dy|, |dx| <= max_shift, pooled over images and channels (intra-channel only): each lag
    averages the products of every pixel pair at that displacement (SGR eq. 16 with integer
    displacements). Raw second moments; the estimate is raystudy.covariance's, the one the
    SGR regularizer's Σ uses. Returns (2m+1, 2m+1), centre = 0."""
    return pooled_covariance_function(z.double(), max_shift, "unbiased")


def axial_profile(cf: torch.Tensor) -> torch.Tensor:
    """C(d) for d = 0..m: the mean of the four axis directions (exact integer distances)."""
    m = cf.shape[0] // 2
    row, col = cf[m], cf[:, m]
    return (row[m:] + row[:m + 1].flip(0) + col[m:] + col[:m + 1].flip(0)) / 4


def decay_length(profile: torch.Tensor) -> float:
    """Displacement at which C(d)/C(0) first falls to 1/e (SGR's decay length), linearly
    interpolated between integer displacements; NaN if it stays above within range."""
    p = (profile / profile[0]).tolist()
    target = math.exp(-1.0)
    for d in range(1, len(p)):
        if p[d] <= target:
            return (d - 1) + (p[d - 1] - target) / (p[d - 1] - p[d])
    return float("nan")


class PerturbationCovarianceOptions(_AttackOptions):
    max_shift: int | None = Field(None, ge=1, description="largest displacement (default: half the image)")
    normalize: bool = Field(True, description="unit-L2 perturbations, as SGR's Σ estimate")
    center: bool = Field(True, description="subtract the per-pixel mean perturbation (false: raw "
                                          "second moments, the paper's Σ)")


class PerturbationCovariance(Metric):
    """Covariance function of adversarial perturbations over pixel displacement, and the
    data's, with their decay lengths (SGR, papers/structured_gradient_regularization.txt,
    Fig. 2: adversarial perturbations decay much faster than the data).

    Curves `perturbation_covariance.<attack>` and `perturbation_covariance.data`: x =
    displacement in pixels (along the axes), covariance = C(d)/C(0), covariance_raw = C(d).
    The data are centred by their per-pixel mean, and so are the perturbations unless
    `center: false`: the paper uses raw second moments because the mean perturbation is
    negligible on CIFAR-10, but on MNIST clipping to [0, 1] leaves only positive
    perturbations on the black background, and that mean would dominate the raw moments.
    """

    x_title = "pixel displacement"

    def compute(self, run: Run, o: PerturbationCovarianceOptions) -> MetricResult:
        ctx, x = run.ctx, run.x
        h, w = x.shape[-2:]
        m = min(o.max_shift or min(h, w) // 2, min(h, w) - 1)
        adv = adversarial_perturbations(run.model, x, run.y, o, ctx.seed, run.batch_size)
        if o.normalize:
            adv = _unit(adv)
        res = MetricResult()
        # How much of the perturbations' energy their mean carries: what centring removes.
        res.scalars[f"perturbation_covariance.{o.attack}.mean_energy_fraction"] = mean_energy_fraction(adv).item()
        saved = {}
        # The same estimator as the SGR regularizer's Σ (raystudy.covariance), centred or raw.
        for name, z, center in ((o.attack, adv, o.center), ("data", x, True)):
            cf = pooled_covariance_function(z.double(), m, "unbiased", center)
            prof = axial_profile(cf)
            saved[name] = cf.cpu()
            for d, (v, raw) in enumerate(zip((prof / prof[0]).tolist(), prof.tolist())):
                res.curves.append({"metric": f"perturbation_covariance.{name}", "x": float(d),
                                   "covariance": v, "covariance_raw": raw})
            res.scalars[f"perturbation_covariance.{name}.decay_length"] = decay_length(prof)
        if ctx.artifacts is not None:
            ctx.artifacts.mkdir(parents=True, exist_ok=True)
            torch.save(saved, ctx.artifacts / "perturbation_covariance.pt")
        return res


perturbation_covariance = METRICS.register("perturbation_covariance", PerturbationCovarianceOptions)(
    PerturbationCovariance())


# ------------------------------------------------------------------------ LRC noise

@lru_cache(maxsize=8)
def _spatial_cholesky(h: int, w: int, decay: float) -> torch.Tensor:
    """Cholesky factor of Σ[p, q] = exp(-‖p - q‖ / λ) over the H·W pixel grid (float64, CPU).

    Why Cholesky rather than FFT (circulant embedding): the exponential kernel is positive
    definite in 2D, so the factor is exact, has no periodic wrap-around, and for MNIST /
    CIFAR (784 / 1,024 pixels) it costs milliseconds once; each draw is then one matmul on
    the device. Circulant embedding of a long decay length needs an embedding much larger
    than the image to stay non-negative, and is an approximation when it is truncated.
    """
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                            indexing="ij")
    p = torch.stack([ys.flatten(), xs.flatten()], 1)
    cov = torch.exp(-torch.cdist(p, p) / decay)
    cov += 1e-10 * torch.eye(h * w, dtype=torch.float64)
    return torch.linalg.cholesky(cov)


def lrc_sample(shape: tuple[int, int, int, int], decay: float, channel_correlation: float = 0.0,
               generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
    """Long-range-correlated Gaussian noise (N, C, H, W): unit variance per pixel,
    Cov = exp(-‖Δ‖/λ) within a channel, times ρ across channels (ρ = channel_correlation)."""
    n, c, h, w = shape
    ls = _spatial_cholesky(h, w, float(decay)).to(device=device, dtype=torch.float32)
    eps = torch.randn((n, c, h * w), generator=generator, device=device)
    z = eps @ ls.T
    if c > 1 and channel_correlation > 0:
        cc = torch.full((c, c), float(channel_correlation), dtype=torch.float64)
        cc.fill_diagonal_(1.0)
        z = torch.einsum("ij,njd->nid", torch.linalg.cholesky(cc).to(device=device, dtype=z.dtype), z)
    return z.reshape(n, c, h, w)


class LRCNoiseOptions(MetricOptions):
    decay_lengths: list[float] = Field(default_factory=lambda: [5.0], min_length=1)
    strengths: list[float] = Field(default_factory=lambda: [0.0, 0.1, 0.2, 0.3, 0.4, 0.5], min_length=1,
                                   description="per-pixel standard deviation of the noise ([0, 1] pixel units)")
    k: int = Field(10, ge=1, description="draws per input; the worst one counts")
    n: int = Field(500, ge=1)
    split: Literal["test", "val"] = "test"
    channel_correlation: float = Field(0.0, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _check(self):
        if any(d <= 0 for d in self.decay_lengths):
            raise ValueError("decay lengths must be > 0 pixels")
        if any(s < 0 for s in self.strengths):
            raise ValueError("strengths must be >= 0")
        return self


def _tag(v: float) -> str:
    return f"{v:g}".replace(".", "p").replace("-", "m")


class LRCNoise(Metric):
    """Worst-of-k long-range-correlated noise attack (SGR, Sec. 4.3): each input is perturbed
    k times with Gaussian noise of exponentially decaying covariance (decay length λ),
    scaled by each strength and clipped to [0, 1]; an input counts as correct only if all
    k perturbed copies are. The same draws (seeded by the trial's seed) are used for every
    strength and every model.

    Curves `lrc_noise.l<λ>` (x = strength, accuracy); scalars `lrc_noise.l<λ>.accuracy` at
    the largest strength and `.mean_accuracy` over strengths.
    """

    x_title = "noise standard deviation per pixel ([0, 1] pixel units)"

    def compute(self, run: Run, o: LRCNoiseOptions) -> MetricResult:
        x, y = run.x, run.y
        res = MetricResult()
        for li, lam in enumerate(o.decay_lengths):
            g = run.ctx.generator(offset=101 + li)
            noise = [lrc_sample(tuple(x.shape), lam, o.channel_correlation, g, x.device) for _ in range(o.k)]
            name = f"lrc_noise.l{_tag(lam)}"
            accs = []
            for s in o.strengths:
                ok = torch.ones(len(x), dtype=torch.bool, device=x.device)
                for z in noise:
                    ok &= run.predict((x + s * z).clamp(0, 1)) == y
                acc, _ = run.record(name, s, ok)
                accs.append(acc)
                res.curves.append({"metric": name, "x": float(s), "accuracy": acc, "decay_length": float(lam),
                                   "k": o.k})
            res.scalars[f"{name}.accuracy"] = accs[o.strengths.index(max(o.strengths))]
            res.scalars[f"{name}.mean_accuracy"] = sum(accs) / len(accs)
        return res


lrc_noise = METRICS.register("lrc_noise", LRCNoiseOptions)(LRCNoise())
