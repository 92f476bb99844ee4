"""A study's plan, computed once when the study is loaded and reused by validate, plan and run:
the trials, each validated once (its ParsedTrial kept), the config paths the space varies,
and the base fingerprint (what every trial shares, compared against earlier results)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import StudyError, StudyErrors, raise_all
from .configs import gc_paused
from .paths import digest, flatten, plain_json, set_path
from .space import ONLY, OPERATORS, Trial, _operator, expand
from .validate import ParsedTrial, TrialValidator
from .yamlfile import with_line

# A broken study usually repeats one mistake in every trial: show this many at most.
MAX_ERRORS = 20


@dataclass
class Plan:
    trials: list[Trial]
    parsed: dict[str, ParsedTrial] = field(repr=False)   # by trial id
    varied: set[str]
    fingerprint: dict[str, Any]

    @property
    def base_hash(self) -> str:
        return digest(self.fingerprint)


def varied_paths(space: dict, file: str) -> set[str]:
    """Config paths the space varies (grid/choice/.../expr, and each path of a zip)."""
    out: set[str] = set()
    for key, entry in (space or {}).items():
        op, arg = _operator(str(key), entry, file)
        if op == "zip" and isinstance(arg, dict):
            out.update(str(p) for p in arg if p != ONLY)
        elif op in OPERATORS:
            out.add(str(key))
    return out


def base_fingerprint(base: dict, space: dict, varied: set[str]) -> dict[str, Any]:
    """The study's base as flat {path: value}: the trial-level config with the space's
    constants applied and its varied paths left out (those belong to single trials)."""
    consts: dict[str, Any] = {}
    for key, entry in (space or {}).items():
        key = str(key)
        if key in varied or (isinstance(entry, dict) and "zip" in entry):
            continue
        if key.split(".")[0] in base:
            try:
                set_path(base, key, entry)
            except (KeyError, IndexError, TypeError, ValueError):
                consts[f"space.{key}"] = entry
        else:
            consts[f"space.{key}"] = entry
    flat = {k: v for k, v in flatten(base).items()
            if not any(k == p or k.startswith(p + ".") for p in varied)}
    flat.update(consts)
    return plain_json(flat)


def validate_trials(trials: list[Trial], file: str, marks: dict | None = None) -> dict[str, ParsedTrial]:
    """Every trial validated (each distinct section once, see TrialValidator); all distinct
    mistakes (up to MAX_ERRORS) raised together."""
    parsed: dict[str, ParsedTrial] = {}
    errors: list[StudyError] = []
    seen: set[str] = set()
    validate = TrialValidator(file)
    with gc_paused():
        for t in trials:
            try:
                parsed[t.trial_id] = validate(t.config, t.sections)
            except StudyError as e:
                _add_errors(errors, seen, e, t, marks)
                if len(errors) >= MAX_ERRORS:
                    break
    raise_all(errors)
    return parsed


def _add_errors(errors: list[StudyError], seen: set[str], exc: StudyError, t: Trial, marks: dict | None) -> None:
    """The mistakes of one trial that earlier trials did not show already (`seen`), with its
    line and, when the space varies, which trial it was."""
    for err in (with_line(x, marks) for x in (exc.errors if isinstance(exc, StudyErrors) else [exc])):
        if err.render() in seen:
            continue
        seen.add(err.render())
        if t.params:
            err = StudyError(err.raw + f" [in trial {t.trial_id}: {t.describe()}]",
                             file=err.file, path=err.path, expected=err.expected, hint=err.hint)
        errors.append(err)


def make_plan(study) -> Plan:
    """The plan of a loaded StudyDocument (its file, spec, marks and base_config())."""
    space = study.spec.space or {}
    trials = expand(study)
    parsed = validate_trials(trials, study.file, study.marks)
    varied = varied_paths(space, study.file)
    return Plan(trials=trials, parsed=parsed, varied=varied,
                fingerprint=base_fingerprint(study.base_config(), space, varied))
