"""Hessian spectrum of the training loss: top eigenvalues, trace and eigenvalue density.

The SGD-hyperparameters study (Kamath et al., "How do SGD hyperparameters in natural
training affect adversarial robustness?") follows Yao et al. (arXiv:1802.08241,
"Hessian-based analysis of large batch training and robustness to adversaries"):
larger batches give larger dominant eigenvalues of the Hessian of the loss with respect
to the weights. The figures come from PyHessian (Yao et al., arXiv:1912.07145):

* top eigenvalues: pyhessian's power iteration with deflation, seeded, with declared
  `max_iter` / `tol`; each comes with its residual ||Hv - λv|| / |λ| so an unconverged
  iteration is visible in the table;
* trace: pyhessian's Hutchinson estimator (Rademacher probes), reported as the mean of
  the probes and its standard error;
* density: stochastic Lanczos quadrature (Ghorbani et al., arXiv:1901.10159) written here
  on top of pyhessian's Hessian-vector products, because pyhessian 0.1's `density()`
  calls the removed `torch.eig`.

pyhessian 0.1 quirks handled here (see PITFALLS): `cuda=True` by default (we pass the
trial's device type), its constructor leaves the model in eval mode (restored), it
leaves graph-carrying `.grad`s behind (the previous grads are restored), parameters
that take no part in the loss crash it (they are frozen for the duration), and it draws
its probes from the global RNG (forked and seeded, so training is not perturbed).
"""

from __future__ import annotations

import contextlib
import math
import warnings

import torch
from pydantic import Field, field_validator, model_validator
from pyhessian import hessian as PyHessian
from pyhessian.utils import hessian_vector_product
from torch import nn

from ..registry import METRICS
from .base import Metric, MetricOptions, MetricResult, Run, Split, not_taken
from .health_checks import eigen_shortfall

NoN = not_taken("hessian's subset size is 'samples' (examples the loss is averaged over)")


class HessianOptions(MetricOptions):
    top_n: int | None = Field(1, ge=1, description="dominant eigenvalues by power iteration (null: none)")
    max_iter: int = Field(100, ge=1, description="power-iteration steps per eigenvalue at most")
    tol: float = Field(1e-3, gt=0, description="relative change of the eigenvalue that stops the iteration")
    trace: bool = True
    trace_samples: int = Field(100, ge=2, description="Hutchinson probes at most")
    # pyhessian stops when the running mean changes by less than this; 0 takes every probe,
    # which keeps the standard error honest (an early stop after 3 probes would not).
    trace_tol: float = Field(0.0, ge=0)
    density: bool = False
    slq_iterations: int = Field(90, ge=2, description="Lanczos steps per SLQ run")
    slq_runs: int = Field(1, ge=1, description="SLQ runs (random starting vectors) averaged")
    density_grid: int = Field(200, ge=10, description="points of the eigenvalue grid")
    density_bandwidth: float = Field(0.01, gt=0, description="Gaussian kernel width, as a fraction of the spectrum's range")
    samples: int = Field(1024, ge=1, description="examples of `split` the loss is averaged over")
    n: NoN = None
    split: Split = "train"
    batch_size: int = Field(256, ge=1, description="examples per Hessian-vector product batch")
    # `seed` also seeds pyhessian's probes and the SLQ starting vectors.
    at_epochs: list[int] | None = Field(None, description="also take it after these epochs (1-based)")

    @field_validator("top_n", mode="before")
    @classmethod
    def _zero(cls, v):
        if v == 0 and not isinstance(v, bool):
            raise ValueError("top_n: 0 asks for no eigenvalue; write top_n: null to skip them, "
                             "or a count >= 1")
        return v

    @model_validator(mode="after")
    def _something(self):
        if not self.top_n and not self.trace and not self.density:
            raise ValueError("nothing to compute: set top_n >= 1, trace: true or density: true")
        if self.at_epochs is not None and any(e < 1 for e in self.at_epochs):
            raise ValueError("at_epochs are 1-based epoch numbers (the spectrum after that epoch)")
        return self


@contextlib.contextmanager
def _hessian_session(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int,
                     device: torch.device, seed: int):
    """A pyhessian object on the trial's device; mode, grads, requires_grad and RNG restored."""
    criterion = nn.CrossEntropyLoss()
    was_training = model.training
    params = [p for p in model.parameters() if p.requires_grad]
    saved_grads = [p.grad for p in params]
    cuda = device.type == "cuda"
    frozen: list[nn.Parameter] = []
    try:
        model.eval()
        for p in params:
            p.grad = None
        # Parameters outside the loss have no gradient and crash pyhessian: freeze them.
        probe = criterion(model(x[:64]), y[:64])
        grads = torch.autograd.grad(probe, params, allow_unused=True)
        for p, g in zip(params, grads):
            if g is None:
                p.requires_grad_(False)
                frozen.append(p)
        del probe, grads
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.random.fork_rng(devices=[device] if cuda else []))
            if cuda:  # pyhessian's 'cuda' means the current device
                stack.enter_context(torch.cuda.device(device))
            torch.manual_seed(seed)
            # pyhessian's backward(create_graph=True) ties params and grads in a cycle; the
            # grads are reset in `finally`, which breaks it, so the warning is noise.
            stack.enter_context(warnings.catch_warnings())
            warnings.filterwarnings("ignore", message="Using backward.. with create_graph=True")
            if len(x) <= batch_size:
                h = PyHessian(model, criterion, data=(x, y), cuda=cuda)
            else:
                batches = [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x), batch_size)]
                h = PyHessian(model, criterion, dataloader=batches, cuda=cuda)
            yield h
    finally:
        for p in frozen:
            p.requires_grad_(True)
        for p, g in zip(params, saved_grads):
            p.grad = g
        model.train(was_training)


def hvp(h, v: list[torch.Tensor]) -> list[torch.Tensor]:
    """H v for the loss averaged over every sample of the pyhessian object."""
    if h.full_dataset:
        return list(h.dataloader_hv_product(v)[1])
    return list(hessian_vector_product(h.gradsH, h.params, v))


def flat_hvp(h):
    """H v on flat vectors (Lanczos works on one vector, pyhessian on per-parameter lists)."""
    shapes = [p.shape for p in h.params]
    sizes = [p.numel() for p in h.params]

    def f(v: torch.Tensor) -> torch.Tensor:
        parts = [t.view(s) for t, s in zip(torch.split(v, sizes), shapes)]
        return torch.cat([t.reshape(-1) for t in hvp(h, parts)])
    return f, sum(sizes)


def slq(matvec, dim: int, iterations: int, runs: int, generator: torch.Generator,
        device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Stochastic Lanczos quadrature nodes and weights, shape (runs, m) each.

    Each run starts Lanczos from a normalized Rademacher vector v, so that
    sum_i w_i f(θ_i) estimates tr f(H) / dim without bias (E[v vᵀ] = I / dim). Full
    reorthogonalization keeps the Ritz values from producing ghost copies. A run whose
    Krylov space closes early (β ≈ 0) is exact on that space; its unused slots get
    weight 0.
    """
    m = min(iterations, dim)
    nodes = torch.zeros(runs, m, dtype=torch.float64)
    weights = torch.zeros(runs, m, dtype=torch.float64)
    for r in range(runs):
        v = torch.randint(0, 2, (dim,), generator=generator, device=device).float().mul_(2).sub_(1)
        v /= math.sqrt(dim)
        V = torch.zeros(m, dim, device=device)
        alphas: list[float] = []
        betas: list[float] = []
        V[0] = v
        w = matvec(v)
        a = torch.dot(w, v)
        w = w - a * v
        alphas.append(a.item())
        scale = abs(alphas[0]) + 1e-30
        for j in range(1, m):
            b = torch.linalg.vector_norm(w)
            # The Krylov space is invariant: the quadrature is already exact.
            if b.item() <= 1e-7 * max(scale, b.item()):
                break
            v = w / b
            for _ in range(2):  # twice is enough (Parlett's "twice is enough")
                v = v - V[:j].T @ (V[:j] @ v)
            v = v / torch.linalg.vector_norm(v)
            V[j] = v
            w = matvec(v) - b * V[j - 1]
            a = torch.dot(w, v)
            w = w - a * v
            alphas.append(a.item())
            betas.append(b.item())
            scale = max(scale, abs(alphas[-1]), betas[-1])
        k = len(alphas)
        T = torch.diag(torch.tensor(alphas, dtype=torch.float64))
        if k > 1:
            off = torch.tensor(betas, dtype=torch.float64)
            T += torch.diag(off, 1) + torch.diag(off, -1)
        theta, U = torch.linalg.eigh(T)
        nodes[r, :k] = theta
        weights[r, :k] = U[0] ** 2
        if k < m:
            nodes[r, k:] = theta[-1]
    return nodes, weights


def smooth_density(nodes: torch.Tensor, weights: torch.Tensor, grid: int,
                   bandwidth: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian-smoothed spectral density on a grid; integrates to 1 (5σ margins)."""
    th = nodes.reshape(-1)
    w = weights.reshape(-1) / weights.shape[0]
    lo, hi = th.min().item(), th.max().item()
    sigma = bandwidth * max(hi - lo, 1e-12 + 1e-6 * max(abs(lo), abs(hi)))
    t = torch.linspace(lo - 5 * sigma, hi + 5 * sigma, grid, dtype=torch.float64)
    z = (t[:, None] - th[None, :]) / sigma
    dens = (torch.exp(-0.5 * z ** 2) * w[None, :]).sum(1) / (sigma * math.sqrt(2 * math.pi))
    return t, dens


def _top_eigenvalues(h, top_n: int, max_iter: int, tol: float) -> dict[str, float]:
    """Dominant eigenvalues (largest |λ| first), each with its relative residual."""
    out = {}
    vals, vecs = h.eigenvalues(maxIter=max_iter, tol=tol, top_n=top_n)
    order = sorted(range(len(vals)), key=lambda i: -abs(vals[i]))
    for k, i in enumerate(order, 1):
        lam, v = vals[i], vecs[i]
        hv = hvp(h, v)
        r2 = sum(((a - lam * b) ** 2).sum() for a, b in zip(hv, v))
        n2 = sum((b ** 2).sum() for b in v)
        out[f"hessian.top{k}"] = float(lam)
        out[f"hessian.top{k}_residual"] = (r2.sqrt() / n2.sqrt()).item() / max(abs(lam), 1e-12)
    return out


def _eigen_agreement(h, scalars: dict, o: HessianOptions, health, device: torch.device) -> dict[str, float]:
    """`health.hessian.eigen_agreement`: the power-iteration eigenvalues against the Ritz
    values of one Lanczos run (full reorthogonalization, a Rademacher start), which needs no
    gap between eigenvalues to find them. Power iteration with a relative-change stopping rule
    can stop on the wrong eigenvalue when two are close in magnitude, with a residual that looks
    like a converged one; see health_checks.eigen_shortfall for why the comparison is sound."""
    if health is None or not health.on("eigen_agreement"):
        return {}
    f, dim = flat_hvp(h)
    steps = max(health.check("eigen_agreement").lanczos_steps, o.top_n + 1)
    g = torch.Generator(device=device).manual_seed(o.seed + 1)
    nodes, weights = slq(f, dim, steps, 1, g, device)
    # Slots after an early end of the Krylov space repeat the top node with weight 0.
    ritz = nodes[0][weights[0] > 0].tolist()
    power = [scalars[f"hessian.top{k}"] for k in range(1, o.top_n + 1)]
    return {"health.hessian.eigen_agreement": eigen_shortfall(power, ritz)}


def _trace(h, samples: int, tol: float) -> dict[str, float]:
    """Hutchinson's estimate: the mean of the probes, its standard error and the probe count."""
    probes = torch.tensor(h.trace(maxIter=samples, tol=tol), dtype=torch.float64)
    se = (probes.std(unbiased=True) / math.sqrt(len(probes))).item() if len(probes) > 1 else float("nan")
    return {"hessian.trace": probes.mean().item(), "hessian.trace_se": se, "hessian.trace_n": float(len(probes))}


class Hessian(Metric):
    """Hessian of the cross-entropy loss w.r.t. the weights on `samples` examples of
    `split` (eval mode, as PyHessian): `hessian.top1..topN` (dominant first) with
    `hessian.topK_residual`, `hessian.trace` ± `hessian.trace_se`, and the SLQ density as
    curve rows {metric: hessian.density, x: eigenvalue, density}. Yao et al. 2018; Kamath
    et al. (SGD hyperparameters vs adversarial robustness)."""

    x_title = "eigenvalue"

    def subsets(self, o: HessianOptions):
        return [(o.split, o.samples)]

    def outputs(self, o: HessianOptions):
        scalars = [f"hessian.top{k}{s}" for k in range(1, (o.top_n or 0) + 1) for s in ("", "_residual")]
        if o.trace:
            scalars += ["hessian.trace", "hessian.trace_se", "hessian.trace_n"]
        return scalars, (["hessian.density"] if o.density else [])

    def compute(self, run: Run, o: HessianOptions) -> MetricResult:
        res = MetricResult()
        device = run.ctx.device
        with _hessian_session(run.model, run.x, run.y, o.batch_size, device, o.seed) as h:
            if o.top_n:
                res.scalars.update(_top_eigenvalues(h, o.top_n, o.max_iter, o.tol))
                res.scalars.update(_eigen_agreement(h, res.scalars, o, run.ctx.extra.get("health"), device))
            if o.trace:
                res.scalars.update(_trace(h, o.trace_samples, o.trace_tol))
            if o.density:
                f, dim = flat_hvp(h)
                g = torch.Generator(device=device).manual_seed(o.seed)
                nodes, weights = slq(f, dim, o.slq_iterations, o.slq_runs, g, device)
                t, dens = smooth_density(nodes, weights, o.density_grid, o.density_bandwidth)
                res.curves.extend({"metric": "hessian.density", "x": float(a), "density": float(b)}
                                  for a, b in zip(t.tolist(), dens.tolist()))
        return res


hessian = METRICS.register("hessian", HessianOptions)(Hessian())
