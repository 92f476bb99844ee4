"""The study's `health:` section: which checks exist, what each measures, their default
tolerances and options (no torch, no Ray; spec stays a leaf). Judging recorded values
against these options is raystudy.health's business."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from pydantic import Field, create_model

from ..registry import Options

PREFIX = "health."


@dataclass(frozen=True)
class Check:
    """One check: the value names it writes (the last part of `health.<...>.<value>`),
    where it applies, its default tolerance and what that tolerance means."""

    name: str
    values: tuple[str, ...]
    scope: str              # "trial", "robustness profile" or "hessian"
    tol: float
    doc: str
    z: float | None = None  # standard errors of sampling noise allowed on top of tol
    extra: tuple[tuple[str, Any, str], ...] = ()   # (option, default, description)


CHECKS: tuple[Check, ...] = (
    Check("did_not_learn", ("did_not_learn_loss_ratio", "did_not_learn_acc_ratio"), "trial", 0.1,
          "final training loss / ln K within `tol` of 1, or clean test accuracy · K below `acc_factor`",
          extra=(("acc_factor", 1.5, "fails when clean accuracy < acc_factor / K"),)),
    Check("nonfinite_loss", ("nonfinite_loss",), "trial", 0.0,
          "epochs whose training loss was NaN/inf (1 when the trial stopped on one)"),
    Check("robust_overfit", ("robust_overfit_drop",), "trial", 0.05,
          "best minus last value of a robustness AUC tracked per epoch (every_epochs)"),
    Check("monotone_rise", ("monotone_rise",), "robustness profile", 0.01,
          "largest rise of accuracy above its running minimum as ε grows", z=3.0),
    Check("eps0_gap", ("eps0_gap",), "robustness profile", 0.005,
          "|accuracy on the attack's ε = 0 output − clean accuracy| (a second pass: a "
          "randomized model or input pipeline shows here)"),
    Check("unbounded_acc", ("unbounded_acc",), "robustness profile", 0.0,
          "accuracy under the attack with an unbounded budget (L∞ ε = 1, L2 ε = √d; minimal "
          "attacks: without a cap); fails above chance (1/K) + tol", z=3.0),
    Check("single_step_gap", ("single_step_gap",), "robustness profile", 0.01,
          "accuracy under the iterative attack minus under its single step (FGSM/FGM) at the "
          "check ε, same images", z=3.0),
    Check("convergence_gain", ("convergence_gain",), "robustness profile", 0.02,
          "accuracy the attack loses with `steps_factor`× the steps and `restarts` restarts, "
          "same images", z=2.0,
          extra=(("steps_factor", 4, "steps of the stronger run, as a multiple of the profile's"),
                 ("restarts", 2, "random restarts of the stronger run"))),
    Check("zero_grad_fraction", ("zero_grad_fraction",), "robustness profile", 0.05,
          "fraction of images whose loss gradient w.r.t. the input is exactly zero at the "
          "attack's start point (fp32)"),
    Check("gradient_free_gap", ("gradient_free_gap",), "robustness profile", 0.02,
          "fraction of images the gradient-free Square attack breaks that the profile's attack "
          "left correct, at the check ε", z=2.0,
          extra=(("queries", 200, "Square queries per image"),)),
    Check("eigen_agreement", ("eigen_agreement",), "hessian", 0.05,
          "largest relative shortfall of a power-iteration eigenvalue below the Lanczos Ritz "
          "value of the same rank (Ritz values never exceed the true ones)",
          extra=(("lanczos_steps", 30, "Lanczos steps (Hessian-vector products)"),)),
)
BY_NAME = {c.name: c for c in CHECKS}
BY_VALUE = {v: c for c in CHECKS for v in c.values}


class CheckOptions(Options):
    enabled: bool = True
    tol: float = Field(0.0, ge=0)


def _options_class(c: Check) -> type[CheckOptions]:
    fields: dict[str, Any] = {"tol": (float, Field(c.tol, ge=0, description=c.doc))}
    if c.z is not None:
        fields["z"] = (float, Field(c.z, ge=0, description="standard errors of sampling noise allowed"))
    for name, default, desc in c.extra:
        fields[name] = (type(default), Field(default, gt=0, description=desc))
    cls = create_model(f"{c.name.title().replace('_', '')}Options", __base__=CheckOptions, **fields)
    cls.__doc__ = f"`health.checks.{c.name}` ({c.scope}): {c.doc}."
    return cls


CHECK_OPTIONS = {c.name: _options_class(c) for c in CHECKS}
HealthChecks = create_model(
    "HealthChecks", __base__=Options,
    **{c.name: (CHECK_OPTIONS[c.name], Field(default_factory=CHECK_OPTIONS[c.name])) for c in CHECKS})


class HealthOptions(Options):
    """The study's `health:` section (study-level: it never enters a trial's id). Every check
    is on by default; `checks: {NAME: {enabled: false}}` switches one off, `tol` (and `z`,
    the standard errors of sampling noise allowed, where the check compares proportions)
    changes how much it tolerates."""

    enabled: bool = True
    n: int = Field(100, ge=1, description="images the extra attack runs use: the first n of the "
                                          "profile's own seeded subset")
    checks: HealthChecks = Field(default_factory=HealthChecks)  # type: ignore[valid-type]

    def on(self, name: str) -> bool:
        """Whether check `name` is measured and judged."""
        return self.enabled and getattr(self.checks, name).enabled

    def check(self, name: str):
        return getattr(self.checks, name)
