"""Adversarial attacks by name: torchattacks wrappers plus a batched DeepFool.

Every attack takes a model on plain NCHW inputs in [0, 1] (models normalize inside)
and returns adversarial inputs in [0, 1] on the same device. Two families:

* budget attacks (`fgsm`, `pgd`, `pgd_l2`, `autoattack`) take an ε and return a
  perturbation of norm at most ε;
* minimal-perturbation attacks (`deepfool`, `cw`; `deepfool_torchattacks` as a reference) take no ε
  and return the smallest perturbation they find; one run gives accuracy at every ε
  (an input survives ε when its perturbation is larger than ε or it was not fooled).

`deepfool` (also registered as `deepfool_batched`) is our own L2 DeepFool (Moosavi-Dezfooli
et al., CVPR 2016) over a whole batch at once: torchattacks' DeepFool (registered as
`deepfool_torchattacks`, a reference) loops over single images, which is far too slow for the
thousands of inputs behind the spatial-vs-adversarial paper's average distance to the decision
boundary, and it stops short on images whose pixels it clipped, so those count as robust at
every ε.

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

from .deepfool import deepfool_batched
from .gradmode import input_grad_only  # noqa: F401  (re-exported)
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
    # After the first step, linearize only this many candidates (those whose boundary looks
    # nearest); null: every candidate at every step, as in the original (raystudy/deepfool.py).
    track: int | None = Field(3, ge=1)
    # Of those, the ones beyond the nearest only while their boundary looks at most `band`
    # times as far as the nearest's; null: all `track` of them at every step.
    band: float | None = Field(2.0, ge=1)


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
def seeded(seed: int, device: torch.device):
    """Random starts come from torch's global RNG inside torchattacks: fork it, so two
    models get the same starts and the caller's RNG stream is left as it was."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


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
                            track=o.track, band=o.band, batch_size=batch_size).adv


for _info, _options in [
    (AttackInfo("fgsm", "Linf", True, "FGSM, one signed-gradient step (Goodfellow et al.)",
                make=lambda model, eps, o, k, seed: _torchattacks().FGSM(model, eps=eps)), FGSMOptions),
    (AttackInfo("pgd", "Linf", True, "L∞ PGD (Madry et al.)", make=_pgd("PGD")), PGDAttackOptions),
    (AttackInfo("pgd_l2", "L2", True, "L2 PGD", make=_pgd("PGDL2")), PGDAttackOptions),
    (AttackInfo("autoattack", "Linf", True,
                "AutoAttack ensemble (Croce & Hein); slow on a CPU (Square runs 5000 queries)",
                make=lambda model, eps, o, k, seed: _torchattacks().AutoAttack(
                    model, norm=o.norm, eps=eps, version=o.version, n_classes=k, seed=seed)), AutoAttackOptions),
    # `deepfool` is the batched one: torchattacks' stalls on images it has clipped, and an input it
    # fails on counts as robust at every ε (issue 17: it fooled 57% of correctly classified MNIST
    # digits within 50 steps, the batched one 100%). Its version stays as a named reference.
    (AttackInfo("deepfool", "L2", False, "L2 DeepFool (Moosavi-Dezfooli et al.), batched (= deepfool_batched)",
                run=_batched_deepfool), DeepFoolBatchedOptions),
    (AttackInfo("deepfool_batched", "L2", False, "our batched L2 DeepFool", run=_batched_deepfool),
     DeepFoolBatchedOptions),
    (AttackInfo("deepfool_torchattacks", "L2", False,
                "torchattacks' per-image L2 DeepFool (reference only: slow, and stalls on clipped pixels)",
                make=lambda model, eps, o, k, seed: _torchattacks().DeepFool(
                    model, steps=o.steps, overshoot=o.overshoot)), DeepFoolOptions),
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

