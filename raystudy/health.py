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

No torch and no Ray here: `raystudy status` and the report judge rows with it too. The
checks and their options (the `health:` section) live in raystudy.spec.healthspec.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from .spec.healthspec import (BY_NAME, BY_VALUE, CHECK_OPTIONS, CHECKS, PREFIX, Check, CheckOptions,  # noqa: F401
                              HealthChecks, HealthOptions)


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
