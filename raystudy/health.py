"""Trial health: which checks exist, their options (the study's `health:` section) and the
one function that turns measured values into pass/fail (`judge`).

The workers only MEASURE: each check writes its value as a flat scalar `health.<name>`
(`health.did_not_learn_loss_ratio`, `health.robustness.pgd.monotone_rise`,
`health.hessian.eigen_agreement`, ...), and, where sampling noise matters, its binomial
standard error as `health.<name>_se`. Whether a value fails is decided here, in the driver,
from the values and the tolerances, so changing a tolerance re-judges recorded trials
without retraining. A check that was not measured is neither passed nor failed.

The checks follow the usual list of ways a robustness evaluation goes wrong (Carlini et al.,
"On evaluating adversarial robustness", arXiv:1902.06705; Athalye et al., "Obfuscated
gradients give a false sense of security", ICML 2018): accuracy must not rise with ε, an
unbounded budget must break the model, iterative attacks must beat single-step ones, more
steps and restarts must not help, gradients must not vanish at the attack's start, and a
gradient-free attack must not beat the white-box one. Training checks flag a model that
never learned (Rice et al., "Overfitting in adversarially robust deep learning", ICML 2020,
for robust overfitting). Where the values come from: raystudy.training_health (training),
raystudy.metrics.health_checks (robustness profiles and the Hessian).

No torch and no Ray here: `raystudy status` and the report judge rows with it too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from pydantic import Field, create_model

from .registry import Options

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


def _num(v) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def _noisy(row: dict, col: str, o) -> bool | None:
    v = _num(row.get(col))
    if v is None:
        return None
    se = _num(row.get(col + "_se")) or 0.0
    return v > o.tol + o.z * se


def _did_not_learn(row: dict, base: str, o) -> bool | None:
    ratio = _num(row.get(base + "did_not_learn_loss_ratio"))
    acc = _num(row.get(base + "did_not_learn_acc_ratio"))
    if ratio is None and acc is None:
        return None
    return bool((ratio is not None and abs(ratio - 1.0) <= o.tol)
                or (acc is not None and acc < o.acc_factor))


def _unbounded(row: dict, base: str, o) -> bool | None:
    v = _num(row.get(base + "unbounded_acc"))
    if v is None:
        return None
    chance = _num(row.get(PREFIX + "chance")) or 0.0
    se = _num(row.get(base + "unbounded_acc_se")) or 0.0
    return v > chance + o.tol + o.z * se


def _above(value: str) -> Callable[[dict, str, Any], bool | None]:
    def rule(row: dict, base: str, o) -> bool | None:
        v = _num(row.get(base + value))
        return None if v is None else v > o.tol
    return rule


def _noise_rule(value: str) -> Callable[[dict, str, Any], bool | None]:
    return lambda row, base, o: _noisy(row, base + value, o)


RULES: dict[str, Callable[[dict, str, Any], bool | None]] = {
    "did_not_learn": _did_not_learn,
    "nonfinite_loss": _above("nonfinite_loss"),
    "robust_overfit": _above("robust_overfit_drop"),
    "monotone_rise": _noise_rule("monotone_rise"),
    "eps0_gap": _above("eps0_gap"),
    "unbounded_acc": _unbounded,
    "single_step_gap": _noise_rule("single_step_gap"),
    "convergence_gain": _noise_rule("convergence_gain"),
    "zero_grad_fraction": _above("zero_grad_fraction"),
    "gradient_free_gap": _noise_rule("gradient_free_gap"),
    "eigen_agreement": _above("eigen_agreement"),
}


def measured(row: dict) -> list[tuple[str, Check]]:
    """(scope prefix, check) for every check with a value in `row`, in the row's order;
    the prefix is what stands between `health.` and the value name (`robustness.pgd.`)."""
    seen: list[tuple[str, Check]] = []
    for key in row:
        if not key.startswith(PREFIX):
            continue
        scope, _, value = key[len(PREFIX):].rpartition(".")
        c = BY_VALUE.get(value)
        if c is not None and (scope, c) not in [(s, k) for s, k in seen]:
            seen.append((scope, c))
    return seen


def judge(row: dict, options: HealthOptions | None = None) -> tuple[bool, list[str]]:
    """(ok, names of the failed checks) of one trial row from its `health.*` values.

    A flag is the check's name after its scope: `did_not_learn`, `robustness.pgd.monotone_rise`,
    `hessian.eigen_agreement`. Checks switched off in `options` and checks without a value are
    neither passed nor failed."""
    options = options or HealthOptions()
    flags = []
    for scope, c in measured(row):
        if not options.on(c.name):
            continue
        base = PREFIX + (scope + "." if scope else "")
        if RULES[c.name](row, base, options.check(c.name)):
            flags.append(f"{scope}.{c.name}" if scope else c.name)
    return not flags, flags


def summary_columns(row: dict, options: HealthOptions | None = None) -> dict[str, Any]:
    """`health.ok` and `health.flags` (comma-separated, "" when ok) for a trial row; nothing
    for a row without any measured check (a trial that errored, or one recorded before the
    checks existed, was never judged: neither healthy nor unhealthy)."""
    if not measured(row):
        return {}
    ok, flags = judge(row, options)
    return {PREFIX + "ok": ok, PREFIX + "flags": ",".join(flags)}
