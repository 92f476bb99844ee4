"""Adversarial attacks by name: torchattacks wrappers plus a batched DeepFool.

Every attack takes a model on plain NCHW inputs in [0, 1] (models normalize inside)
and returns adversarial inputs in [0, 1] on the same device. Two families:

* budget attacks (`fgsm`, `pgd`, `pgd_l2`, `autoattack`) take an ε and return a
  perturbation of norm at most ε;
* minimal-perturbation attacks (`deepfool`, `deepfool_batched`, `cw`) take no ε
  and return the smallest perturbation they find; one run gives accuracy at every ε
  (an input survives ε when its perturbation is larger than ε or it was not fooled).

`deepfool_batched` is our own L2 DeepFool (Moosavi-Dezfooli et al., CVPR 2016) over a
whole batch at once: torchattacks' DeepFool loops over single images, which is far
too slow for the thousands of inputs behind the spatial-vs-adversarial paper's
average distance to the decision boundary.

`pgd` here (torchattacks) and the training PGD (`raystudy.methods.adversarial.pgd`) give the
same iterates under equal ε, step size, steps and start (tests/test_methods.py pins it); only
their defaults differ: here 10 steps of 2.5·ε/steps, in training 40 steps of 0.01 (Madry).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Literal

import torch
from pydantic import Field
from torch import nn

from .registry import ATTACKS, Options
from .spec.types import Number


@dataclass(frozen=True)
class AttackInfo:
    """What a metric needs to know of an attack before running it (the registry's object;
    the entry's options class lists the hyperparameters a study may set)."""

    name: str
    norm: str                 # "Linf" or "L2": the norm ε is measured in
    budget: bool              # True: takes ε; False: minimal-perturbation attack
    doc: str
    # How it runs, one of the two: `make(model, eps, options, n_classes, seed)` builds a
    # torchattacks-style callable (`adv = atk(x, y)`) that `attack` runs batch by batch with
    # frozen parameters and a seeded RNG; `run(model, x, y, eps, options, batch_size, seed)`
    # runs the whole attack itself (our batched DeepFool).
    make: Callable[..., Any] | None = None
    run: Callable[..., Any] | None = None

    def __post_init__(self):
        # The registry shows an entry's __doc__ as its description.
        object.__setattr__(self, "__doc__", self.doc)

    @property
    def params(self) -> tuple[str, ...]:
        return tuple(ATTACKS.get(self.name).schema.model_fields)


class FGSMOptions(Options):
    pass


class PGDAttackOptions(Options):
    steps: int = Field(10, ge=1)
    # Madry et al.'s rule 2.5·ε/steps when left out.
    alpha: Number | None = Field(None, gt=0)
    random_start: bool = True
    restarts: int = Field(1, ge=1, description="an input keeps the first restart that fools it")


class AutoAttackOptions(Options):
    version: Literal["standard", "plus", "rand"] = "standard"
    norm: Literal["Linf", "L2"] = "Linf"


class DeepFoolOptions(Options):
    steps: int = Field(50, ge=1)
    overshoot: float = Field(0.02, ge=0)


class DeepFoolBatchedOptions(DeepFoolOptions):
    # Classes linearized per step: the label and the top others (the original uses 10).
    candidates: int = Field(10, ge=2)


class CWOptions(Options):
    steps: int = Field(50, ge=1)
    c: float = Field(1.0, gt=0)
    kappa: float = Field(0.0, ge=0)
    lr: float = Field(0.01, gt=0)




def attack_parameters() -> list[str]:
    """Every hyperparameter some registered attack takes (what a metric may pass on)."""
    return sorted({k for name in ATTACKS.names() for k in ATTACKS.get(name).schema.model_fields})


def get_attack(name: str, path: str | None = None) -> AttackInfo:
    return ATTACKS.get(name, path=path).obj


@contextlib.contextmanager
def input_grad_only(model: nn.Module):
    """Attacks need gradients w.r.t. inputs only. Freezing parameters skips their
    gradients (faster), leaves `.grad` of a trained model untouched, and avoids escnn's
    error on a second parameter-gradient backward in eval mode (see PITFALLS)."""
    params = [p for p in model.parameters() if p.requires_grad]
    was_training = model.training
    model.eval()
    for p in params:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p in params:
            p.requires_grad_(True)
        model.train(was_training)


@contextlib.contextmanager
def seeded(seed: int, device: torch.device):
    """Random starts come from torch's global RNG inside torchattacks: fork it, so two
    models get the same starts and the caller's RNG stream is left as it was."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


# ------------------------------------------------------------------ batched DeepFool

@dataclass
class DeepFoolResult:
    adv: torch.Tensor       # (N, C, H, W) adversarial inputs, clamped to [0, 1]
    fooled: torch.Tensor    # (N,) bool: prediction differs from `labels` at `adv`
    labels: torch.Tensor    # (N,) the class each input was pushed away from
    steps: torch.Tensor     # (N,) linearization steps used


def _deepfool_chunk(model, x0, k0, steps, overshoot, candidates, box):
    n = x0.shape[0]
    flat = lambda t: t.reshape(t.shape[0], -1)  # noqa: E731
    r_tot = torch.zeros_like(x0)
    x_adv = x0.clone()
    fooled = torch.zeros(n, dtype=torch.bool, device=x0.device)
    used = torch.zeros(n, dtype=torch.long, device=x0.device)
    cand = None
    for step in range(steps + 1):
        active = (~fooled).nonzero().squeeze(1)
        if active.numel() == 0:
            break
        xa = x_adv[active].detach().requires_grad_(True)
        logits = model(xa)
        if cand is None:
            # The original linearizes the top classes only (10 by default): the label
            # first, then the highest other logits of the clean input.
            others = logits.detach().scatter(1, k0[:, None], float("-inf"))
            c = min(candidates, logits.shape[1]) - 1
            cand = torch.cat([k0[:, None], others.topk(c, dim=1).indices], 1)
        now = logits.argmax(1) != k0[active]
        fooled[active[now]] = True
        if step == steps or bool(now.all()):
            break
        keep = ~now
        ca = cand[active]
        # One backward per other candidate gives every image's gradient of that logit
        # minus the label's at once (images do not interact in eval mode); differencing
        # before the backward saves the label's own pass.
        l0 = logits.gather(1, ca[:, :1])
        grads = []
        for j in range(1, ca.shape[1]):
            g, = torch.autograd.grad((logits.gather(1, ca[:, j:j + 1]) - l0).sum(), xa,
                                     retain_graph=j < ca.shape[1] - 1)
            grads.append(flat(g))
        w = torch.stack(grads, 1)[keep]                               # (m, K-1, D)
        f = logits.detach().gather(1, ca)[keep]                       # (m, K)
        rows = active[keep]
        if box == "mask":
            # Pixels at 0 or 1 cannot move further out of the image: drop those components,
            # so the step heads for the nearest boundary point the box allows ("clip" keeps
            # them in r_tot, where the clip of the iterate removes them, as in Foolbox).
            cur = flat(x_adv[rows])[:, None, :]
            w = w.masked_fill(((cur <= 0) & (w < 0)) | ((cur >= 1) & (w > 0)), 0.0)
        fp = (f[:, 1:] - f[:, :1]).abs()
        wn = w.norm(dim=2).clamp_min(1e-12)
        best = (fp / wn).argmin(1)
        idx = torch.arange(best.shape[0], device=x0.device)
        dist = fp[idx, best] / wn[idx, best]
        if box == "clip":
            # A clipped iterate gets only the unclipped share of each step and nears the boundary
            # without crossing it: Foolbox's 1e-4 more per step ends that (only once clipped).
            dist += 1e-4 * (flat(x_adv[rows]) != flat(x0[rows] + (1 + overshoot) * r_tot[rows])).any(1)
        r = (dist / wn[idx, best])[:, None] * w[idx, best]
        r_tot[rows] += r.reshape(-1, *x0.shape[1:])
        used[rows] += 1
        # Overshoot scales the accumulated step, as in the original (torchattacks: every step).
        nxt = x0[rows] + (1 + overshoot) * r_tot[rows]
        x_adv[rows] = nxt if box == "none" else nxt.clamp(0, 1)
    return x_adv.detach(), fooled, used


def deepfool_batched(model: nn.Module, x: torch.Tensor, labels: torch.Tensor | None = None, *,
                     steps: int = 50, overshoot: float = 0.02, candidates: int = 10,
                     batch_size: int = 500, clamp: bool = True, box: str = "clip") -> DeepFoolResult:
    """L2 DeepFool on a whole batch (Moosavi-Dezfooli et al., 2016).

    At each step every not-yet-fooled image moves to the nearest linearized decision
    boundary among its candidate classes; the perturbation is (1 + overshoot) times
    the accumulated step. `labels` defaults to the model's own predictions (the
    distance to its decision boundary); inputs already not predicted as their label
    count as fooled with a zero perturbation, as in torchattacks. With `clamp` the
    iterate stays in [0, 1]; `box` is how a step treats pixels at the box edge:
    "mask" drops the gradient components that push them further out (the step heads
    for the nearest boundary point the box allows), "clip" keeps them in the
    accumulated step and clips the iterate (Foolbox's L2DeepFoolAttack, which it matches
    image by image). "clip" is the default: it finds the smaller perturbations (on MNIST
    about 1.5% smaller at the same success rate: it creeps up to the boundary from inside,
    so most of the overshoot is never applied) at about 3x the steps of "mask" (see
    benchmarks/RESULTS.md). Neither stalls on black backgrounds, as torchattacks'
    per-image version does (it clips the iterate it accumulates on). `clamp=False` is the
    original, unconstrained algorithm.
    """
    if box not in ("mask", "clip"):
        raise ValueError(f"box must be 'mask' or 'clip', not {box!r}")
    advs, fooled, used, ks = [], [], [], []
    with input_grad_only(model):
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size].detach()
            if labels is None:
                with torch.no_grad():
                    kb = model(xb).argmax(1)
            else:
                kb = labels[i:i + batch_size]
            a, f, u = _deepfool_chunk(model, xb, kb, steps, overshoot, candidates, box if clamp else "none")
            advs.append(a)
            fooled.append(f)
            used.append(u)
            ks.append(kb)
    if not advs:
        e = torch.empty(0, dtype=torch.long, device=x.device)
        return DeepFoolResult(x.clone(), e.bool(), e, e)
    return DeepFoolResult(torch.cat(advs), torch.cat(fooled), torch.cat(ks), torch.cat(used))


# ----------------------------------------------------------------- torchattacks wrappers

def pgd_step(eps: float, o: Options) -> float:
    """The PGD step size: the study's `alpha`, else Madry et al.'s rule 2.5·ε/steps."""
    return 2.5 * eps / o.steps if o.alpha is None else o.alpha


def _torchattacks():
    import torchattacks   # imported when an attack runs: validating a study needs none of it
    return torchattacks


def _pgd(cls: str) -> Callable[..., Any]:
    def make(model, eps, o, n_classes, seed):
        return getattr(_torchattacks(), cls)(model, eps=eps, alpha=pgd_step(eps, o), steps=o.steps,
                                             random_start=o.random_start)
    return make


def _batched_deepfool(model, x, y, eps, o, batch_size, seed):
    return deepfool_batched(model, x, y, steps=o.steps, overshoot=o.overshoot, candidates=o.candidates,
                            batch_size=batch_size).adv


for _info, _options in [
    (AttackInfo("fgsm", "Linf", True, "FGSM, one signed-gradient step (Goodfellow et al.)",
                make=lambda model, eps, o, k, seed: _torchattacks().FGSM(model, eps=eps)), FGSMOptions),
    (AttackInfo("pgd", "Linf", True, "L∞ PGD (Madry et al.)", make=_pgd("PGD")), PGDAttackOptions),
    (AttackInfo("pgd_l2", "L2", True, "L2 PGD", make=_pgd("PGDL2")), PGDAttackOptions),
    (AttackInfo("autoattack", "Linf", True,
                "AutoAttack ensemble (Croce & Hein); slow on a CPU (Square runs 5000 queries)",
                make=lambda model, eps, o, k, seed: _torchattacks().AutoAttack(
                    model, norm=o.norm, eps=eps, version=o.version, n_classes=k, seed=seed)), AutoAttackOptions),
    (AttackInfo("deepfool", "L2", False, "torchattacks' per-image L2 DeepFool (reference, slow)",
                make=lambda model, eps, o, k, seed: _torchattacks().DeepFool(
                    model, steps=o.steps, overshoot=o.overshoot)), DeepFoolOptions),
    (AttackInfo("deepfool_batched", "L2", False, "our batched L2 DeepFool", run=_batched_deepfool),
     DeepFoolBatchedOptions),
    (AttackInfo("cw", "L2", False, "Carlini-Wagner L2", make=lambda model, eps, o, k, seed: _torchattacks().CW(
        model, c=o.c, kappa=o.kappa, steps=o.steps, lr=o.lr)), CWOptions),
]:
    ATTACKS.register(_info.name, _options)(_info)


def attack_options(name: str, **hp) -> Options:
    """The attack's validated options from keyword hyperparameters (None: its default)."""
    schema = ATTACKS.get(name).schema
    unknown = set(hp) - set(attack_parameters())
    if unknown:
        raise TypeError(f"unknown attack options {sorted(unknown)}")
    given = {k: v for k, v in hp.items() if v is not None}
    wrong = set(given) - set(schema.model_fields)
    if wrong:
        raise TypeError(f"option(s) {sorted(wrong)} do not apply to attack '{name}' "
                        f"(its options: {', '.join(schema.model_fields) or 'none'})")
    return schema.model_validate(given)


def attack(model: nn.Module, name: str, x: torch.Tensor, y: torch.Tensor, eps: float | None = None,
           *, batch_size: int = 500, seed: int = 0, **hp) -> torch.Tensor:
    """Adversarial versions of `x` (labels `y`) under attack `name`, batched, on x's device.

    `eps` is required for budget attacks and ignored by minimal ones; `hp` are the
    attack's options (its registry entry's options class). With `restarts > 1` (PGD)
    an input keeps the first restart that fools it.
    """
    info = get_attack(name)
    if info.budget and eps is None:
        raise ValueError(f"attack '{name}' needs eps")
    o = attack_options(name, **hp)
    if info.budget and eps == 0:
        # A zero budget admits no perturbation (and torchattacks' PGDL2 returns NaN there:
        # its random start divides by the zero radius).
        return x.clone()
    if info.run is not None:
        return info.run(model, x, y, eps, o, batch_size, seed)
    out = []
    with input_grad_only(model), seeded(seed, x.device):
        n_classes = None
        for i in range(0, len(x), batch_size):
            xb, yb = x[i:i + batch_size], y[i:i + batch_size]
            if n_classes is None:
                with torch.no_grad():
                    n_classes = model(xb[:1]).shape[1]
            atk = info.make(model, eps, o, n_classes, seed)
            adv = atk(xb, yb)
            for _ in range(1, getattr(o, "restarts", 1)):
                with torch.no_grad():
                    left = (model(adv).argmax(1) == yb).nonzero().squeeze(1)
                if left.numel() == 0:
                    break
                adv[left] = atk(xb[left], yb[left])
            out.append(adv.detach())
    return torch.cat(out) if out else x.clone()


def perturbation_norm(delta: torch.Tensor, norm: str) -> torch.Tensor:
    flat = delta.reshape(delta.shape[0], -1)
    return flat.abs().amax(1) if norm == "Linf" else flat.norm(dim=1)

