"""Covariance functions of perturbations over pixel displacement, shared by the SGR regularizer
(raystudy.methods.regularizers) and the `perturbation_covariance` metric, so that both estimate
the same Σ (Roth et al., "Adversarially Robust Training through Structured Gradient
Regularization", 2018, Sec. 3.3, Eq. 16; papers/structured_gradient_regularization.txt).

A covariance function K (shape C×C×(2H−1)×(2W−1), zero displacement at the centre) stands for
the d×d matrix Σ_{(c,p),(c',q)} = K[c, c', q − p]. The paper's Eq. 14–15 average the *raw*
second moments E[δδᵀ] and its footnote 4 calls the difference to the covariance negligible
(CIFAR-10). On MNIST it is not: clipping to [0, 1] leaves one-signed perturbations on the
black background, and the mean perturbation carries about half of their energy. `center`
subtracts it (E[δδᵀ] − μμᵀ, the zero-mean noise the paper's derivation assumes, Eq. 5);
`mean_energy_fraction` measures ‖μ‖² / E‖δ‖².

Only torch is imported here: methods and metrics both import this module without a cycle.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def normalized(delta: torch.Tensor) -> torch.Tensor:
    """Per-example unit L2 norm (all-zero perturbations stay zero)."""
    norm = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
    return delta / norm.view(-1, *([1] * (delta.dim() - 1)))


def _second_moments(delta: torch.Tensor, estimator: str) -> torch.Tensor:
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
    elif estimator == "biased":
        r = r / (h * w)
    else:
        raise ValueError(f"unknown estimator {estimator!r} (expected 'biased' or 'unbiased')")
    return r / n                    # float64: centring subtracts two close numbers


def displacement_covariance(delta: torch.Tensor, estimator: str = "biased", center: bool = False) -> torch.Tensor:
    """K[c, c', Δ] (shape C×C×(2H−1)×(2W−1), Δ = 0 at the centre) from perturbations (N,C,H,W).

    Each entry averages δ[c, p]·δ[c', p+Δ] over images and over the pixel pairs at that
    displacement: "unbiased" divides by the number of such pairs, "biased" by H·W. The biased
    estimate is the autocorrelation of the zero-padded signal and so always gives a positive
    semi-definite Σ (a penalty that cannot go negative); the unbiased one weights long
    displacements, seen by few pairs, as much as short ones but may lose definiteness.

    center: the covariance instead of the raw second moments, K(δ) − K(μ) with μ the batch's
    mean perturbation: the displacement form of E[δδᵀ] − μμᵀ (both maps are linear in the
    dense matrix, so this equals the estimate of the centred perturbations δ − μ).
    """
    k = _second_moments(delta, estimator)
    if center:
        k = k - _second_moments(delta.mean(0, keepdim=True), estimator)
    return k.to(delta.dtype)


def mean_term(mean: torch.Tensor, estimator: str = "biased", radius: int | None = None) -> torch.Tensor:
    """The covariance function of μμᵀ for a mean perturbation μ (C, H, W), cropped like Σ:
    subtracting it from running raw moments gives the running covariance."""
    return crop_radius(_second_moments(mean[None], estimator), radius).to(mean.dtype)


def mean_energy_fraction(delta: torch.Tensor) -> torch.Tensor:
    """‖μ‖² / E‖δ‖²: the share of the perturbations' energy (raw second moments' trace) that
    their mean carries; 0 for zero-mean perturbations, 1 when every δ is the same."""
    flat = delta.detach().double().flatten(1)
    return flat.mean(0).square().sum() / flat.square().sum(1).mean().clamp_min(1e-300)


def pooled_covariance_function(delta: torch.Tensor, max_shift: int, estimator: str = "unbiased",
                               center: bool = False) -> torch.Tensor:
    """C(Δ) for |dy|, |dx| <= max_shift, intra-channel and pooled over channels (the mean of
    K[c, c, Δ] over c): the covariance function whose decay length SGR's Fig. 2 reports."""
    n, c, h, w = delta.shape
    if not 0 <= max_shift < min(h, w):
        raise ValueError(f"max_shift={max_shift} must be in [0, {min(h, w) - 1}]")
    k = crop_radius(displacement_covariance(delta, estimator, center), max_shift)
    return k.diagonal(dim1=0, dim2=1).mean(-1)


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


# ------------------------------------------------------------------ positive semi-definiteness

def _symbol(k: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Per-frequency C×C Hermitian blocks (shape (2H−1)(2W−1)×C×C) of the block-circulant matrix
    on a (2H−1)×(2W−1) grid that holds K's lags: its principal H·W submatrix is exactly Σ."""
    nh, nw = 2 * h - 1, 2 * w - 1
    ch, cw = (k.shape[2] - 1) // 2, (k.shape[3] - 1) // 2
    # Lags past the image's extent never meet a pixel pair: drop them.
    rh, rw = min(ch, h - 1), min(cw, w - 1)
    k = k[:, :, ch - rh:ch + rh + 1, cw - rw:cw + rw + 1]
    ch, cw = rh, rw
    c = k.shape[0]
    grid = torch.zeros(c, c, nh, nw, dtype=torch.float64, device=k.device)
    grid[:, :, :k.shape[2], :k.shape[3]] = k.double()
    # Lag Δ sits at index Δ mod N: 2H−1 cells keep lags −(H−1)..H−1 apart, so no lag aliases.
    grid = torch.roll(grid, shifts=(-ch, -cw), dims=(2, 3))
    return torch.fft.fft2(grid).permute(2, 3, 0, 1).reshape(nh * nw, c, c)


def min_eigenvalue(k: torch.Tensor, h: int, w: int) -> float:
    """A lower bound on the smallest eigenvalue of the H·W-pixel Σ that K stands for (the
    smallest eigenvalue of the circulant embedding; equal to it up to the embedding's slack)."""
    return torch.linalg.eigvalsh(_symbol(k, h, w)).min().item()


def project_psd(k: torch.Tensor, h: int, w: int, rtol: float = 1e-6) -> tuple[torch.Tensor, float]:
    """(K₊, λ_min): a covariance function whose Σ is positive semi-definite on H×W images, and
    the smallest eigenvalue of K's circulant embedding before the projection.

    Cropping K to a radius (or the unbiased estimator) can make Σ indefinite, and then the
    penalty ½∇ℓᵀΣ∇ℓ rewards gradients along the negative directions. Σ is a principal
    submatrix of a block-circulant matrix whose eigenvalues are those of K's per-frequency
    C×C blocks; clipping those at zero is the Frobenius projection of that circulant onto
    the PSD cone, and its principal submatrix, the new Σ, is PSD. The projected K spans every
    lag of the image (the crop's support is not kept). K is returned unchanged when its
    smallest eigenvalue is above −rtol·(largest), i.e. negative only by round-off.
    """
    s = _symbol(k, h, w)
    lam, u = torch.linalg.eigh(s)
    lo, hi = lam.min().item(), lam.max().item()
    if lo >= -rtol * max(hi, 0.0):
        return k, lo
    s = (u * lam.clamp_min(0).to(u.dtype)[:, None, :]) @ u.mH
    c, nh, nw = k.shape[0], 2 * h - 1, 2 * w - 1
    grid = torch.fft.ifft2(s.reshape(nh, nw, c, c).permute(2, 3, 0, 1)).real
    return torch.roll(grid, shifts=(h - 1, w - 1), dims=(2, 3)).to(k.dtype), lo
