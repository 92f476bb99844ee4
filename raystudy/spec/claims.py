"""A study's claims checked against its plan before Ray starts (the grammar is in claimspec.py).

Every metric a claim names must be written by a metric the study evaluates (each metric
declares its outputs: `Metric.outputs(options)`); every path a selection (`a`, `b`, `within`)
or a trend's `over` names must be a varied path or a config path; every selected value must
occur among the trials. Mistakes name the key path (`claims.0.compare.a.train.method.name`),
what was expected and the closest valid name.

Under `--smoke`, `--profile` or `--set` the run's plan may lack what the study as written has
(a profile pins momentum at 0, or drops the rows a claim compares): such a claim is checked
against the study as written too, and its verdict says "not varied" or "no trials" instead of
refusing the run. A name found in neither is a mistake.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from ..errors import StudyError, raise_all, suggest
from ..registry import METRICS
from .claimspec import as_number, matches, split_point
from .paths import canonical, flatten, get_path, has_path
from .space import _operator, expand
from .validate import metric_items
from .yamlfile import with_line

# Space operators that make a key an axis of its own (a zip's key is one axis; its paths and
# `expr` entries are derived from other entries and never pair or group trials themselves).
AXIS_OPERATORS = ("grid", "choice", "uniform", "loguniform", "randint", "zip")
MAX_SHOWN = 40


def independent_axes(space: dict | None, file: str = "<study>") -> list[str]:
    """The space keys that vary on their own, in declaration order (recorded in study.json:
    claims pair and group trials by them)."""
    return [str(k) for k, e in (space or {}).items() if _operator(str(k), e, file)[0] in AXIS_OPERATORS]


def epoch_curves(options: Any, scalars: list[str], curves: list[str]) -> list[str]:
    """Curves a metric taken during training adds (raystudy.execute.at_epochs_hook): `<name>@epoch`."""
    if getattr(options, "every_epochs", None) or getattr(options, "at_epochs", None):
        return [f"{s}@epoch" for s in scalars] + [f"{c}@epoch" for c in curves]
    return []


class _Universe:
    """What claims may name: this run's trials and outputs, plus the study as written."""

    def __init__(self, study, written=None):
        self.trials = [(t.params, t.config) for t in study.plan.trials]
        self.scalars: set[str] = set()
        self.curves: set[str] = set()
        self.undeclared: set[str] = set()
        seen: set[str] = set()
        for t in study.plan.trials:
            key = canonical(t.config.get("evaluate"))
            if key not in seen:
                seen.add(key)
                for m in study.plan.parsed[t.trial_id].metrics:
                    self._add(m.name, m.entry.obj, m.options)
        if written is not None:
            self._add_written(written, seen)
        self._values: dict[str, list] = {}

    def _add(self, name: str, metric: Any, options: Any) -> None:
        try:
            scalars, curves = metric.outputs(options)
        except NotImplementedError:
            self.undeclared.add(name)
            return
        self.scalars.update(scalars)
        self.curves.update(curves)
        self.curves.update(epoch_curves(options, scalars, curves))

    def _add_written(self, written, seen: set[str]) -> None:
        try:
            trials = expand(written)
        except StudyError:
            return  # the study as written is checked when it is run as written
        self.trials += [(t.params, t.config) for t in trials]
        for t in trials:
            key = canonical(t.config.get("evaluate"))
            if key in seen:
                continue
            seen.add(key)
            try:
                for name, opts, _ in metric_items(t.config.get("evaluate") or []):
                    entry = METRICS.get(name)
                    self._add(name, entry.obj, entry.schema.model_validate(opts))
            except (StudyError, ValidationError):
                continue

    # ------------------------------------------------------------------ names

    def values(self, path: str) -> list:
        """The distinct values `path` takes over the trials (a space key or a config path)."""
        if path not in self._values:
            out: dict[str, Any] = {}
            for params, config in self.trials:
                if path in params:
                    v = params[path]
                elif has_path(config, path):
                    v = get_path(config, path)
                else:
                    continue
                out.setdefault(canonical(v), v)
            self._values[path] = list(out.values())
        return self._values[path]

    def paths(self) -> list[str]:
        keys: dict[str, None] = {}
        for params, config in self.trials[:1] + self.trials[-1:]:
            keys.update(dict.fromkeys(params))
            keys.update(dict.fromkeys(flatten(config)))
        return list(keys)

    def metric_error(self, ref: str, path: str) -> StudyError | None:
        if ref in self.scalars:
            return None
        metric, x, col = split_point(ref)
        if x is not None:
            if as_number(x) is None:
                return StudyError(f"cannot read '{x}' in '{ref}' as a curve point", path=path,
                                  expected="a number or a fraction like 8/255 after '@'")
            if metric in self.curves or (metric.endswith(".acc") and metric[:-4] in self.curves and not col):
                return None
        known = sorted(self.scalars) + [f"{c}@<x>" for c in sorted(self.curves)]
        best = suggest(ref, known) or (suggest(metric, sorted(self.curves)) if x is not None else None)
        extra = (f" ({', '.join(sorted(self.undeclared))} declare no outputs: give them outputs())"
                 if self.undeclared else "")
        return StudyError(f"no metric the study evaluates writes '{ref}'{extra}", path=path,
                          expected="a scalar or a curve point <curve>@<x>[:column], one of: "
                                   + ", ".join(known[:MAX_SHOWN]) + (", ..." if len(known) > MAX_SHOWN else ""),
                          hint=f"did you mean '{best}'?" if best else "add the metric to evaluate:")

    def path_error(self, key: str, path: str) -> StudyError | None:
        if self.values(key):
            return None
        best = suggest(key, self.paths())
        return StudyError(f"no trial has a path '{key}'", path=path,
                          expected="a varied path (a key of space:) or a config path such as model.arch",
                          hint=f"did you mean '{best}'?" if best else None)

    def selector_errors(self, sel: dict, path: str) -> list[StudyError]:
        errs = []
        for key, wanted in sel.items():
            where = f"{path}.{key}"
            err = self.path_error(key, where)
            if err is not None:
                errs.append(err)
                continue
            have = self.values(key)
            shown = [str(v) for v in have][:MAX_SHOWN]
            for w in (wanted if isinstance(wanted, list) else [wanted]):
                if isinstance(w, (dict, list)):
                    errs.append(StudyError("a selection takes a value or a list of values", path=where,
                                           expected="e.g. pgd_at or [pgd_at, trades]"))
                elif not any(matches(v, w) for v in have):
                    best = suggest(str(w), shown)
                    errs.append(StudyError(f"no trial has {key} = {w!r}", path=where,
                                           expected="one of: " + ", ".join(shown),
                                           hint=f"did you mean '{best}'?" if best else None))
        return errs

    def axis_error(self, over: str, path: str) -> StudyError | None:
        err = self.path_error(over, path)
        if err is not None:
            return err
        bad = [str(v) for v in self.values(over) if as_number(v) is None]
        if bad:
            return StudyError(f"a trend needs a numeric axis; '{over}' takes {', '.join(bad[:10])}", path=path,
                              expected="a path whose values are numbers",
                              hint="compare such values pairwise with compare: {a: ..., b: ...}")
        return None


def claim_errors(claims: list, study, written=None) -> list[StudyError]:
    """Every problem of `claims` (ClaimSpec list) against the study's plan; paths claims.<i>...."""
    u = _Universe(study, written)
    errs: list[StudyError] = []
    first: dict[str, int] = {}
    for i, c in enumerate(claims):
        where = f"claims.{i}"
        if c.name in first:
            errs.append(StudyError(f"claim '{c.name}' is declared twice (first at claims.{first[c.name]})",
                                   path=f"{where}.name", hint="give each claim its own name"))
        first.setdefault(c.name, i)
        body, base = c.body, f"{where}.{c.kind}"
        for key in ("metric", "versus"):
            ref = getattr(body, key, None)
            err = u.metric_error(ref, f"{base}.{key}") if ref else None
            if err is not None:
                errs.append(err)
        for sel in (("a", "b", "within") if c.kind == "compare" else ("within",)):
            errs += u.selector_errors(getattr(body, sel), f"{base}.{sel}")
        if c.kind == "trend":
            err = u.axis_error(body.over, f"{base}.over")
            if err is not None:
                errs.append(err)
    return errs


def check_claims(study, written=None) -> None:
    """Raise every mistake of the study's `claims:` (StudyErrors, with file and line)."""
    if not study.spec.claims:
        return
    errs = claim_errors(study.spec.claims, study, written)
    raise_all([with_line(e.located(file=study.file), study.marks) for e in errs])
