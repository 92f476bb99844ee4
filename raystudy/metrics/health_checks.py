"""Evaluation health: the values behind `health.robustness.<name>.*` and
`health.hessian.eigen_agreement` (what each check means and how it is judged: raystudy.health).

A robustness profile is only as good as its attack. Carlini et al. ("On evaluating
adversarial robustness", arXiv:1902.06705, Sec. 5) and Athalye et al. ("Obfuscated gradients
give a false sense of security", ICML 2018, Sec. 3.1) list the symptoms of a weak or masked
evaluation; each becomes a measured value here, from the profile's own rows or from small
extra runs on the first `health.n` images of the profile's seeded subset (the same images
for every run, so the comparisons are paired):

* monotone_rise: accuracy above its running minimum as ε grows (independent attacks per ε);
* eps0_gap: a second pass at ε = 0 against the clean pass (randomized models);
* unbounded_acc: the attack with L∞ ε = 1 / L2 ε = √d (minimal attacks: uncapped);
* single_step_gap: the attack minus its single step (one step of ε, no random start);
* convergence_gain: the attack minus itself with more steps and restarts;
* zero_grad_fraction: inputs whose loss gradient is exactly 0 at the attack's start;
* gradient_free_gap: what Square (Andriushchenko et al., ECCV 2020), which never reads a
  gradient, breaks that the attack left standing.

The comparisons run at one "check ε": the smallest declared ε where the profile's accuracy is
at most half the clean accuracy (where attacks differ most), else the largest declared ε.
Gradients are taken in fp32 (autocast off), so reduced precision cannot pass for masking.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from ..attacks import attack, attack_options, get_attack, input_grad_only, seeded
from ..stats import Z95, wilson
from .base import Run

# Attacks cheap enough to rerun for the comparisons (AutoAttack already contains Square and
# restarts; rerunning it on a CPU would cost minutes).
_RERUN = ("fgsm", "pgd", "pgd_l2")


def add_cummin(curves: list[dict]) -> None:
    """`accuracy_cummin` on each row: the running minimum of accuracy over increasing x within
    each metric, the profile a reader should trust when independent attacks per ε disagree."""
    by_metric: dict[str, list[dict]] = {}
    for r in curves:
        if "accuracy" in r:
            by_metric.setdefault(r["metric"], []).append(r)
    for rows in by_metric.values():
        low = math.inf
        for r in sorted(rows, key=lambda r: r["x"]):
            low = min(low, r["accuracy"])
            r["accuracy_cummin"] = low


def _se(p: float, n: int) -> float:
    """The sampling noise of a proportion p over n images, as a standard error: the half-width
    of its 95% Wilson interval (raystudy.stats.wilson) over z. Unlike sqrt(p(1-p)/n) it is not
    zero at p = 0 or 1, where a handful of images must not pass for certainty."""
    lo, hi = wilson(min(n, max(0, round(p * n))), max(n, 1))
    return (hi - lo) / (2 * Z95)


def _paired_se(a: torch.Tensor, b: torch.Tensor) -> float:
    """Standard error of mean(a) − mean(b) for two boolean outcomes on the same images."""
    d = a.float() - b.float()
    return (d.var(unbiased=False) / max(len(d), 1)).sqrt().item() if len(d) else 0.0


def monotone_rise(rows: dict, n: int) -> tuple[float, float]:
    """(largest rise of accuracy above its running minimum, its standard error)."""
    best, se, low = 0.0, 0.0, None
    for e in sorted(rows):
        acc = rows[e][0]
        if low is not None and acc - low > best:
            best, se = acc - low, math.sqrt(_se(acc, n) ** 2 + _se(low, n) ** 2)
        low = acc if low is None else min(low, acc)
    return best, se


def check_eps(rows: dict, declared: list[float], clean_acc: float) -> float:
    """The ε the comparisons run at: the smallest declared ε > 0 where the profile's accuracy
    is at most half the clean accuracy, else the largest declared ε."""
    nonzero = sorted(e for e in declared if e > 0)
    for e in nonzero:
        if rows[e][0] <= clean_acc / 2:
            return e
    return nonzero[-1] if nonzero else 0.0


def zero_grad_fraction(model, x: torch.Tensor, y: torch.Tensor, start: torch.Tensor | None = None) -> float:
    """Fraction of inputs whose cross-entropy gradient w.r.t. the input is exactly zero at
    `start` (default x), computed in fp32."""
    x0 = (x if start is None else start).detach().clone().requires_grad_(True)
    with input_grad_only(model), torch.enable_grad(), torch.autocast(x.device.type, enabled=False):
        loss = F.cross_entropy(model(x0.float()), y, reduction="sum")
        g, = torch.autograd.grad(loss, x0)
    return (g.reshape(len(g), -1).abs().amax(1) == 0).float().mean().item()


def _start_point(x: torch.Tensor, eps: float, norm: str, random_start: bool, seed: int) -> torch.Tensor:
    """The attack's first iterate: x, or x plus its uniform L∞ / L2-ball random start."""
    if not random_start or eps == 0:
        return x
    g = torch.Generator(device=x.device).manual_seed(seed)
    if norm == "Linf":
        d = (torch.rand(x.shape, generator=g, device=x.device) * 2 - 1) * eps
    else:
        d = torch.randn(x.shape, generator=g, device=x.device)
        d = d / d.reshape(len(d), -1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (x.dim() - 1))
        d = d * eps * torch.rand(len(x), generator=g, device=x.device).view(-1, *[1] * (x.dim() - 1))
    return (x + d).clamp(0, 1)


def square_attack(model, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str, queries: int,
                  seed: int) -> torch.Tensor:
    """torchattacks' Square (margin loss, one restart): adversarial inputs without gradients."""
    import torchattacks as ta
    with input_grad_only(model), seeded(seed, x.device):
        atk = ta.Square(model, norm=norm, eps=eps, n_queries=queries, n_restarts=1, seed=seed, loss="margin")
        return atk(x, y).detach()


class _Subset:
    """The first n images of the profile's subset and the attack's settings."""

    def __init__(self, run: Run, o, hp: dict, clean: torch.Tensor, n: int):
        self.run, self.o, self.hp = run, o, hp
        self.x, self.y, self.clean = run.x[:n], run.y[:n], clean[:n]
        self.m = len(self.x)

    def correct(self, eps: float | None, **override) -> torch.Tensor:
        hp = {**self.hp, **override}
        adv = attack(self.run.model, self.o.attack, self.x, self.y, eps, batch_size=self.run.batch_size,
                     seed=self.o.seed, **hp)
        return self.run.predict(adv) == self.y


def _unbounded(s: _Subset, norm: str, budget: bool) -> dict:
    if budget:
        eps = 1.0 if norm == "Linf" else math.sqrt(s.x[0].numel())
        ok = s.correct(eps)
    else:
        ok = s.correct(None)
    p = ok.float().mean().item()
    return {"unbounded_acc": p, "unbounded_acc_se": _se(p, s.m)}


def _comparisons(s: _Subset, e: float, h) -> dict:
    """single_step_gap, convergence_gain, gradient_free_gap at the check ε, same images."""
    out: dict[str, float] = {}
    base = s.correct(e)
    iterative = s.o.attack in ("pgd", "pgd_l2")
    if iterative and h.on("single_step_gap"):
        one = s.correct(e, steps=1, alpha=e, random_start=False)
        out["single_step_gap"] = (base.float().mean() - one.float().mean()).item()
        out["single_step_gap_se"] = _paired_se(base, one)
    if iterative and h.on("convergence_gain"):
        c = h.check("convergence_gain")
        steps = attack_options(s.o.attack, **s.hp).steps
        strong = base & s.correct(e, steps=steps * c.steps_factor, restarts=c.restarts)
        out["convergence_gain"] = (base.float().mean() - strong.float().mean()).item()
        out["convergence_gain_se"] = _paired_se(base, strong)
    if h.on("gradient_free_gap"):
        left = base.nonzero().squeeze(1)
        broken = torch.zeros_like(base)
        if left.numel():
            norm = get_attack(s.o.attack).norm if s.o.norm is None else s.o.norm
            adv = square_attack(s.run.model, s.x[left], s.y[left], e, norm,
                                h.check("gradient_free_gap").queries, s.o.seed)
            broken[left] = s.run.predict(adv) != s.y[left]
        g = broken.float().mean().item()
        out["gradient_free_gap"], out["gradient_free_gap_se"] = g, _se(g, s.m)
    return out


def profile_checks(run: Run, o, norm: str, rows: dict, clean: torch.Tensor, hp: dict) -> dict[str, float]:
    """The `health.*` scalars of one robustness profile (empty when health is off: the
    options ride in `run.ctx.extra["health"]`, set for the final evaluation only)."""
    h = run.ctx.extra.get("health")
    if h is None or not h.enabled:
        return {}
    t0 = time.perf_counter()
    info = get_attack(o.attack)
    vals: dict[str, float] = {}
    if info.budget and len(rows) > 1 and h.on("monotone_rise"):
        vals["monotone_rise"], vals["monotone_rise_se"] = monotone_rise(rows, len(run.x))
    s = _Subset(run, o, hp, clean, h.n)
    if h.on("eps0_gap"):
        # The profile itself skips the attack at ε = 0; this pass goes through it (a cheap
        # attack only: AutoAttack at ε = 0 would run all its iterations for nothing).
        x0 = attack(run.model, o.attack, s.x, s.y, 0.0, batch_size=run.batch_size, seed=o.seed, **hp) \
            if info.budget and o.attack in _RERUN else s.x
        again = run.predict(x0)
        vals["eps0_gap"] = abs((again == s.y).float().mean().item() - (s.clean == s.y).float().mean().item())
    rerun = o.attack in _RERUN or not info.budget
    if rerun and h.on("unbounded_acc"):
        vals.update(_unbounded(s, norm, info.budget))
    clean_acc = (clean == run.y).float().mean().item()
    e = check_eps(rows, [float(v) for v in o.eps], clean_acc) if info.budget else 0.0
    if h.on("zero_grad_fraction"):
        random_start = bool(getattr(attack_options(o.attack, **hp), "random_start", False))
        start = _start_point(s.x, e, norm, random_start, o.seed)
        vals["zero_grad_fraction"] = zero_grad_fraction(run.model, s.x, s.y, start)
    if info.budget and o.attack in _RERUN and e > 0:
        vals["check_eps"] = e
        vals.update(_comparisons(s, e, h))
    key = f"health.robustness.{o.label}."
    out = {key + k: float(v) for k, v in vals.items()}
    with torch.no_grad():
        out["health.chance"] = 1.0 / run.model(run.x[:1]).shape[1]
    # The checks' share of the metric's time (the cost a study pays for them).
    out[f"time.health.robustness.{o.label}_s"] = time.perf_counter() - t0
    return out


def eigen_shortfall(power: list[float], ritz: list[float]) -> float:
    """Largest relative shortfall of the k-th power-iteration eigenvalue (by |λ|) below the
    k-th Lanczos Ritz value (by |θ|), for k up to len(power).

    Ritz values interlace the spectrum: the k-th largest |θ| never exceeds the k-th largest
    |λ| (Cauchy interlacing at both ends). So a power-iteration value clearly below the Ritz
    value of its rank proves an eigenvalue was skipped, whatever residual it reported; a
    Lanczos run that has not converged only makes the value smaller (no false alarm)."""
    p = sorted((abs(v) for v in power), reverse=True)
    r = sorted((abs(v) for v in ritz), reverse=True)
    worst = -math.inf
    for k in range(min(len(p), len(r))):
        worst = max(worst, (r[k] - p[k]) / max(r[k], 1e-12))
    return worst if worst > -math.inf else math.nan
