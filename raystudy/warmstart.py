"""`train.init_from`: start a trial from another trial's final weights (fine-tuning studies,
the papers' warm-started CuSP, "a → b" runs across studies).

    train:
      init_from: {study: aug180, match: {train.augment.rotation: 180, seed: 0}}
      # or {results: results/aug180, trial_id: 3f2a...}

The source trial is found in the source study's plan (every trial's resolved config) and
must be `completed` in its table; its weights are its final checkpoint's model.pt, found by
raystudy.layout's one rule. The driver resolves every warm start once, when a run is
planned (a typo or an unfinished source is one clear error before Ray starts), and ships
the file's path to the worker with the trial (`init_weights`), which only loads it.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from .errors import StudyError
from .layout import MODEL_FILE, PLAN, Layout
from .spec.paths import get_path, has_path
from .spec.schema import InitFrom, TrialConfig
from .spec.types import parse_number
from .spec.validate import INIT_FROM as PATH
from .spec.validate import parse_init_from as parse

__all__ = ["InitFrom", "parse", "results_dir", "find_trial", "checkpoint_file", "resolve", "load_weights",
           "load_init_state"]


def _base_dir() -> Path:
    # Ray Tune runs a trial in its own folder; relative paths mean the user's folder.
    return Path(os.environ.get("TUNE_ORIG_WORKING_DIR") or os.getcwd())


def results_dir(spec: InitFrom, root: str | Path | None = None) -> Path:
    """The source study's results folder; `root` is the results root of the run (for `study`)."""
    if spec.results is not None:
        p = Path(spec.results).expanduser()
    else:
        p = Path(spec.root or root or "results").expanduser() / spec.study
    return p if p.is_absolute() else _base_dir() / p


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(u, v) for u, v in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return a == b
    try:
        fa, fb = float(parse_number(a)), float(parse_number(b))
    except (ValueError, TypeError):
        return a == b
    return math.isclose(fa, fb, rel_tol=1e-9, abs_tol=1e-12)


def _with_defaults(config: dict) -> dict:
    """A trial config with the schema's defaults filled in, so a match on a default works."""
    try:
        return TrialConfig.model_validate(config).model_dump(mode="json")
    except ValidationError:
        return config


def _load_plan(layout: Layout, spec: InitFrom) -> list[dict]:
    plan = layout.read_plan()
    if plan is None:
        where = f"study '{spec.study}'" if spec.study else f"'{layout.out}'"
        raise StudyError(f"no study results for {where} (no {layout / PLAN})",
                         path=f"{PATH}.{'study' if spec.study else 'results'}",
                         hint="run the source study first, or point 'results' / 'root' at its results folder")
    return [{**t, "config": _with_defaults(t.get("config") or {})} for t in plan.get("trials", [])]


def find_trial(spec: InitFrom, root: str | Path | None = None) -> tuple[str, Path]:
    """(trial_id, results folder) of the one completed source trial."""
    out = results_dir(spec, root)
    layout = Layout(out)
    trials = _load_plan(layout, spec)
    rows = layout.trial_rows()
    if spec.trial_id is not None:
        ids = [t["trial_id"] for t in trials]
        if spec.trial_id not in ids and spec.trial_id not in rows:
            raise StudyError(f"no trial '{spec.trial_id}' in {out}", path=f"{PATH}.trial_id",
                             expected="one of: " + ", ".join(ids[:20]) + (" ..." if len(ids) > 20 else ""))
        tid = spec.trial_id
    else:
        for key in spec.match:
            if not any(has_path(t["config"], key) for t in trials):
                raise StudyError(f"no trial of {out} has the config path '{key}'", path=f"{PATH}.match.{key}",
                                 hint="use dotted paths into the trial config, e.g. train.augment.rotation")
        hits = [t for t in trials if all(has_path(t["config"], k) and _same(get_path(t["config"], k), v)
                                         for k, v in spec.match.items())]
        if not hits:
            seen = {k: sorted({json.dumps(get_path(t["config"], k)) for t in trials if has_path(t["config"], k)})
                    for k in spec.match}
            raise StudyError(f"no trial of {out} matches {spec.match}", path=f"{PATH}.match",
                             expected="; ".join(f"{k} in {{{', '.join(v)}}}" for k, v in seen.items()))
        done = [t for t in hits if (rows.get(t["trial_id"]) or {}).get("status") == "completed"]
        if len(done) > 1:
            raise StudyError(f"{len(done)} completed trials of {out} match {spec.match}: "
                             + ", ".join(t["trial_id"] for t in done), path=f"{PATH}.match",
                             hint="add config paths to 'match' (e.g. seed) or give 'trial_id'")
        tid = (done or hits)[0]["trial_id"]
    status = (rows.get(tid) or {}).get("status")
    if status != "completed":
        raise StudyError(f"source trial {tid} of {out} is {status or 'not run yet'}", path=PATH,
                         hint="finish the source study first (`raystudy run` resumes it)")
    return tid, out


def checkpoint_file(tid: str, out: Path) -> Path:
    """model.pt of the source trial's final checkpoint."""
    layout = Layout(out)
    found = layout.final_weights(tid, named=(layout.trial_rows().get(tid) or {}).get("checkpoint"))
    if found is None:
        raise StudyError(f"trial {tid} of {out} has no final checkpoint with {MODEL_FILE}", path=PATH,
                         hint="the source study must run with raystudy >= this version, which saves the final "
                              "weights; re-run that trial (`raystudy run --retry-failed` or delete its row)")
    return found


def resolve(d: dict | InitFrom, root: str | Path | None = None) -> Path:
    """`init_from` -> the source's model.pt (done once per trial, in the driver)."""
    spec = parse(d)
    return checkpoint_file(*find_trial(spec, root))


def load_weights(path: str | Path, model: torch.nn.Module | None = None, strict: bool = True) -> dict:
    """The state dict in `path` (CPU tensors), checked against `model` if given; with
    strict=False only the tensors whose names and shapes match are taken."""
    # weights_only: a checkpoint is data, never code.
    state = torch.load(path, map_location="cpu", weights_only=True)
    if model is None:
        return state
    own = model.state_dict()
    if not strict:
        return {**own, **{k: v for k, v in state.items() if k in own and own[k].shape == v.shape}}
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    bad = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or extra or bad:
        parts = [f"{name}: {', '.join(ks[:4])}{' ...' if len(ks) > 4 else ''}"
                 for name, ks in (("missing", missing), ("unexpected", extra), ("shape differs", bad)) if ks]
        raise StudyError(f"the weights in {path} do not fit this model ({'; '.join(parts)})",
                         path=PATH, hint="warm start from a trial with the same model section, "
                                         "or set strict: false to load only what matches")
    return state


def load_init_state(d: dict | InitFrom, model: torch.nn.Module | None = None, *,
                    root: str | Path | None = None, weights: str | Path | None = None) -> dict:
    """`init_from` as a state dict for `model`: from `weights` when the driver resolved it
    already, else resolved here (runs without a driver: tests, notebooks)."""
    spec = parse(d)
    return load_weights(weights or resolve(spec, root), model, spec.strict)
