"""Load a study file: YAML -> overrides -> schema -> expanded, validated trials."""

from __future__ import annotations

import copy
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ..errors import StudyError, StudyErrors, suggest
from .paths import get_path, set_path
from .schema import StudySpec, TrialConfig
from .space import OPERATORS


# ----------------------------------------------------------------------------- YAML

def _marks(node: yaml.Node, prefix: tuple = (), out: dict | None = None) -> dict:
    """Map each key path to its (line, column), so errors can point into the file."""
    out = {} if out is None else out
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = k.value if isinstance(k, yaml.ScalarNode) else str(k)
            path = prefix + (key,)
            out[path] = (k.start_mark.line + 1, k.start_mark.column + 1)
            _marks(v, path, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            path = prefix + (i,)
            out[path] = (v.start_mark.line + 1, v.start_mark.column + 1)
            _marks(v, path, out)
    return out


def read_yaml(text: str, file: str) -> tuple[Any, dict]:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise StudyError(f"{where}malformed YAML: {problem}", file=file,
                         hint="check indentation and that every 'key: value' has a space after the colon") from None
    marks = _marks(node) if node is not None else {}
    return data, marks


# ------------------------------------------------------------------ pydantic errors

def _unwrap(tp):
    """Find the pydantic model inside Optional[...] / list[...] / dict[str, ...]."""
    origin = typing.get_origin(tp)
    if origin is None:
        return tp
    for arg in typing.get_args(tp):
        inner = _unwrap(arg)
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            return inner
    return None


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    cur: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(cur, type) and issubclass(cur, BaseModel)):
            return None
        f = cur.model_fields.get(part)
        if f is None:
            return None
        cur = _unwrap(f.annotation)
    return cur if isinstance(cur, type) and issubclass(cur, BaseModel) else None


def _dotted(loc: tuple) -> str:
    return ".".join(str(p) for p in loc)


def pydantic_errors(exc: ValidationError, model: type[BaseModel], *, file: str | None,
                    prefix: str | None = None, marks: dict | None = None) -> list[StudyError]:
    out = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        path = _dotted(loc)
        if prefix:
            path = f"{prefix}.{path}" if path else prefix
        line = ""
        if marks is not None:
            m = marks.get(loc)
            if m:
                line = f"line {m[0]}: "
        kind = err["type"]
        if kind == "extra_forbidden":
            parent = _model_at(model, loc[:-1])
            valid = sorted(parent.model_fields) if parent else []
            best = suggest(str(loc[-1]), valid)
            out.append(StudyError(
                f"{line}unknown key '{loc[-1]}'", file=file, path=path,
                expected=("one of: " + ", ".join(valid)) if valid else None,
                hint=f"did you mean '{best}'?" if best else "remove it"))
        elif kind == "missing":
            out.append(StudyError(f"{line}required key is missing", file=file, path=path,
                                  hint="add it"))
        else:
            msg = err["msg"]
            if msg.startswith("Value error, "):
                msg = msg[len("Value error, "):]
            got = err.get("input")
            got_txt = repr(got) if not isinstance(got, (dict, list)) else type(got).__name__
            if len(got_txt) > 60:
                got_txt = got_txt[:57] + "..."
            out.append(StudyError(f"{line}{msg} (got {got_txt})", file=file, path=path,
                                  hint="fix the value"))
    return out


def _with_line(err: StudyError, marks: dict | None) -> StudyError:
    """Point a trial-level error at its line in the file when the key is written there."""
    if not marks or not err.path or err.raw.startswith("line "):
        return err
    parts = tuple(int(p) if p.isdigit() else p for p in err.path.split("."))
    for n in range(len(parts), 0, -1):
        m = marks.get(parts[:n])
        if m:
            return StudyError(f"line {m[0]}: {err.raw}", file=err.file, path=err.path,
                              expected=err.expected, hint=err.hint)
    return err


# ------------------------------------------------------------------------ overrides

def parse_set(item: str) -> tuple[str, Any]:
    """`--set train.epochs=3` -> ('train.epochs', 3); the value is read as YAML."""
    if "=" not in item:
        raise StudyError(f"--set {item!r}: expected PATH=VALUE", hint="e.g. --set train.epochs=3")
    path, _, raw = item.partition("=")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
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


# ------------------------------------------------------------------------- document

def _check_report(spec: StudySpec, file: str, marks: dict | None) -> None:
    """A typo in `report:` should fail at validate time, not after hours of training."""
    if not spec.report:
        return
    try:
        from analysis.report import validate_report
    except ImportError:  # analysis is optional for running studies
        return
    errs = [_with_line(e.located(file=file), marks) for e in validate_report(spec.report)]
    if errs:
        raise errs[0] if len(errs) == 1 else StudyErrors(errs)


@dataclass
class StudyDocument:
    file: str
    spec: StudySpec
    raw: dict
    marks: dict = field(default_factory=dict)
    trials: list = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.spec.name

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


def load_document(raw: Any, *, file: str = "<study>", marks: dict | None = None, smoke: bool = False,
                  profile: str | None = None, sets: list[str] | None = None,
                  expand_trials: bool = True) -> StudyDocument:
    if not isinstance(raw, dict):
        raise StudyError("a study file must be a mapping of keys (name, model, train, ...)",
                         file=file, expected="a YAML mapping", hint="see studies/quickstart.yaml")
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
        doc = apply_overrides(doc, dict(raw.get("smoke") or {}), file)
    if sets:
        doc = apply_overrides(doc, dict(parse_set(s) for s in sets), file)
    try:
        spec = StudySpec.model_validate(doc)
    except ValidationError as e:
        errs = pydantic_errors(e, StudySpec, file=file, marks=marks)
        raise (errs[0] if len(errs) == 1 else StudyErrors(errs)) from None
    _check_report(spec, file, marks)
    if spec.after:
        from ..poststeps import validate_after
        try:
            validate_after(spec.after, file)
        except StudyErrors as e:
            errs = [_with_line(x, marks) for x in e.errors]
            raise StudyErrors(errs) from None
        except StudyError as e:
            raise _with_line(e, marks) from None
    study = StudyDocument(file=file, spec=spec, raw=doc, marks=marks or {})
    if expand_trials:
        from .space import expand
        from .validate import validate_trial
        study.trials = expand(study)
        errors: list[StudyError] = []
        seen: set[str] = set()
        for t in study.trials:
            try:
                validate_trial(t.config, file=file)
            except StudyErrors as e:
                errs = e.errors
            except StudyError as e:
                errs = [e]
            else:
                continue
            for err in errs:
                err = _with_line(err, marks)
                # The same mistake usually repeats in every trial: report it once.
                key = err.render()
                if key not in seen:
                    seen.add(key)
                    if t.params:
                        err = StudyError(err.raw + f" [in trial {t.trial_id}: {t.describe()}]",
                                         file=err.file, path=err.path, expected=err.expected, hint=err.hint)
                    errors.append(err)
            if len(errors) >= 20:
                break
        if errors:
            raise errors[0] if len(errors) == 1 else StudyErrors(errors)
    return study


__all__ = ["load_study", "load_document", "StudyDocument", "parse_set", "apply_overrides",
           "get_path", "pydantic_errors"]
