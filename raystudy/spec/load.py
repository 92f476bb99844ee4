"""Load a study file: YAML -> overrides -> schema -> sections -> the plan (expanded,
validated trials)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml
from pydantic import ValidationError

from ..errors import StudyError, pydantic_errors, raise_all, suggest
from ..registry import SECTIONS
from .paths import get_path, set_path
from .plan import Plan, make_plan
from .schema import StudySpec, TrialConfig
from .space import OPERATORS
from .tuning import check_tuning
from .yamlfile import load_text, read_yaml, with_line


# ------------------------------------------------------------------------ overrides

def parse_set(item: str) -> tuple[str, Any]:
    """`--set train.epochs=3` -> ('train.epochs', 3); the value is read as YAML."""
    if "=" not in item:
        raise StudyError(f"--set {item!r}: expected PATH=VALUE", hint="e.g. --set train.epochs=3")
    path, _, raw = item.partition("=")
    try:
        value = load_text(raw, "--set")[0] if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return path.strip(), value


def apply_overrides(doc: dict, overrides: dict[str, Any], source: str) -> dict:
    """Set dotted paths in the study document. A path that is also a space key pins it."""
    doc = copy.deepcopy(doc)
    space = doc.get("space") or {}
    for path, value in overrides.items():
        if path.startswith("space.") and isinstance(space, dict) and path[len("space."):] in space:
            path = path[len("space."):]     # the same entry, named with or without `space.`
        if isinstance(space, dict) and path in space:
            entry = space[path]
            replaces = isinstance(value, dict) and any(k in OPERATORS for k in value)
            if isinstance(entry, dict) and "zip" in entry and not replaces:
                # A zip's key names its row index: pinning it keeps those rows of the zip
                # (`--set variant=3`, or `--set variant=[0,3]`), never drops the zipped paths.
                space[path] = {"zip": entry["zip"], "only": value if isinstance(value, list) else [value]}
            else:
                # A new space entry replaces the old one; a plain value pins the axis.
                space[path] = value
            continue
        if path.startswith("space."):
            key = path[len("space."):]
            doc.setdefault("space", {})[key] = value
            continue
        try:
            set_path(doc, path, value)
        except (KeyError, IndexError, TypeError) as e:
            raise StudyError(f"cannot set '{path}' ({e})", file=source, path=path,
                             hint="use a dotted path into the study file, e.g. train.epochs") from None
    return doc


# Applied by --smoke before the study's own `smoke:` overrides: a run in seconds.
SMOKE_DEFAULTS = {
    "train.epochs": 1,
    "data.train_size": 256,
    "data.test_size": 128,
    "tune.num_samples": 1,
}
SMOKE_SEARCH_SAMPLES = 2


# ------------------------------------------------------------------------- document

def _section_check(name: str) -> Callable[[Any], list[StudyError]] | None:
    """The validator registered for a study section owned outside the spec (`report:` by
    analysis.report, `after:` by poststeps), or None when that part is not installed."""
    try:
        return SECTIONS.get(name).obj
    except (ImportError, StudyError):  # analysis is optional for running studies
        return None


def _check_sections(spec: StudySpec, file: str, marks: dict | None) -> None:
    """A typo in `report:` or `after:` should fail at validate time, not after hours of training."""
    errs: list[StudyError] = []
    for name in ("report", "after"):
        entries = getattr(spec, name)
        check = _section_check(name) if entries else None
        if check is not None:
            errs += [with_line(e.located(file=file), marks) for e in check(entries)]
    raise_all(errs)


@dataclass
class StudyDocument:
    file: str
    spec: StudySpec
    raw: dict
    marks: dict = field(default_factory=dict)
    _plan: Plan | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def plan(self) -> Plan:
        """Trials, their validation, varied paths and base fingerprint: computed once."""
        if self._plan is None:
            self._plan = make_plan(self)
        return self._plan

    @property
    def trials(self) -> list:
        return self.plan.trials

    def base_config(self) -> dict:
        """The trial-level part of the document (what each trial overrides)."""
        d = self.spec.model_dump(mode="json")
        return {k: d[k] for k in TrialConfig.model_fields}


def load_study(path: str | Path, *, smoke: bool = False, profile: str | None = None,
               sets: list[str] | None = None, expand_trials: bool = True) -> StudyDocument:
    file = str(path)
    p = Path(path)
    if not p.exists():
        raise StudyError("file not found", file=file, hint="check the path (studies live in studies/)")
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise StudyError(f"cannot read file: {e}", file=file) from None
    raw, marks = read_yaml(text, file)
    return load_document(raw, file=file, marks=marks, smoke=smoke, profile=profile, sets=sets,
                         expand_trials=expand_trials)


def _overridden(raw: dict, file: str, smoke: bool, profile: str | None, sets: list[str] | None) -> dict:
    """The document with --profile, then --smoke (defaults, then the study's own `smoke:`),
    then --set applied."""
    doc = raw
    if profile:
        profiles = raw.get("profiles") or {}
        if profile not in profiles:
            best = suggest(profile, profiles)
            raise StudyError(f"unknown profile '{profile}'", file=file, path="profiles",
                             expected="one of: " + (", ".join(profiles) or "(none declared)"),
                             hint=f"did you mean '{best}'?" if best else None)
        doc = apply_overrides(doc, profiles[profile], file)
    if smoke:
        doc = apply_overrides(doc, SMOKE_DEFAULTS, file)
        stages = ((doc.get("train") or {}).get("stages") if isinstance(doc.get("train"), dict) else None)
        if isinstance(stages, list):
            # A staged study ignores train.epochs: shrink every stage as well.
            doc = apply_overrides(doc, {f"train.stages.{i}.epochs": 1 for i, st in enumerate(stages)
                                        if isinstance(st, dict)}, file)
        search = (doc.get("tune") or {}).get("search") if isinstance(doc.get("tune"), dict) else None
        if isinstance(search, dict):
            # A search's budget is its own: two proposals show it works.
            doc = apply_overrides(doc, {"tune.search.num_samples": SMOKE_SEARCH_SAMPLES}, file)
        doc = apply_overrides(doc, dict(raw.get("smoke") or {}), file)
    if sets:
        doc = apply_overrides(doc, dict(parse_set(s) for s in sets), file)
    return doc


def load_document(raw: Any, *, file: str = "<study>", marks: dict | None = None, smoke: bool = False,
                  profile: str | None = None, sets: list[str] | None = None,
                  expand_trials: bool = True) -> StudyDocument:
    """A StudyDocument from parsed YAML; with expand_trials its plan is computed now, so
    every mistake in any trial is reported at load time."""
    if not isinstance(raw, dict):
        raise StudyError("a study file must be a mapping of keys (name, model, train, ...)",
                         file=file, expected="a YAML mapping", hint="see studies/quickstart.yaml")
    doc = _overridden(raw, file, smoke, profile, sets)
    try:
        spec = StudySpec.model_validate(doc)
    except ValidationError as e:
        raise_all(pydantic_errors(e, StudySpec, file=file, marks=marks))
    _check_sections(spec, file, marks)
    study = StudyDocument(file=file, spec=spec, raw=doc, marks=marks or {})
    if expand_trials:
        study.plan  # noqa: B018 - computed (and every trial validated) now
        check_tuning(study)
    return study


__all__ = ["load_study", "load_document", "StudyDocument", "parse_set", "apply_overrides",
           "get_path", "pydantic_errors"]
