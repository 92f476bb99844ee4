"""`train.init_from`: start a trial from another trial's final weights (fine-tuning studies,
the papers' warm-started CuSP, "a → b" runs across studies).

    train:
      init_from: {study: aug180, match: {train.augment.rotation: 180, seed: 0}}
      # or {results: results/aug180, trial_id: 3f2a...}

The source trial is found in `<results>/study.json` (every trial's resolved config) and must be
`completed` in `<results>/trials.parquet`; its weights are the `model.pt` of its final Ray
checkpoint (the `checkpoint` column when the table has one, else the newest
`<results>/*/<trial_id>/checkpoint_*/model.pt`).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from pydantic import Field, ValidationError, model_validator

from .errors import StudyError
from .registry import Options
from .spec.paths import get_path, has_path
from .spec.types import parse_number

PATH = "train.init_from"
MODEL_FILE = "model.pt"


class InitFrom(Options):
    """Where the weights come from: one of `results` (a study's results folder) or `study`
    (a study name under `root`), and one of `trial_id` or `match` (dotted config paths)."""

    results: str | None = None
    study: str | None = None
    # Results root for `study`; default $RAYSTUDY_RESULTS or ./results (as `raystudy run`).
    root: str | None = None
    trial_id: str | None = None
    match: dict[str, Any] = Field(default_factory=dict)
    # False: load the tensors whose names and shapes match, keep the rest as initialized.
    strict: bool = True

    @model_validator(mode="after")
    def _one_of_each(self):
        if (self.results is None) == (self.study is None):
            raise ValueError("give exactly one of 'results' (a results folder) or 'study' (a study name)")
        if self.root is not None and self.study is None:
            raise ValueError("'root' goes with 'study'; with 'results' give the full folder")
        if (self.trial_id is None) == (not self.match):
            raise ValueError("give exactly one of 'trial_id' or 'match' ({dotted.path: value, ...})")
        return self


def parse(d: dict | InitFrom) -> InitFrom:
    if isinstance(d, InitFrom):
        return d
    if not isinstance(d, dict):
        raise StudyError("must be a mapping", path=PATH,
                         expected="{study: NAME, match: {path: value}} or {results: DIR, trial_id: ID}")
    try:
        return InitFrom.model_validate(d)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = f"unknown key '{err['loc'][-1]}'"
        raise StudyError(msg, path=f"{PATH}.{loc}" if loc else PATH,
                         expected="keys: " + ", ".join(InitFrom.model_fields),
                         hint="e.g. init_from: {study: aug180, match: {seed: 0}}") from None


def _base_dir() -> Path:
    # Ray Tune runs a trial in its own folder; relative paths mean the user's folder.
    return Path(os.environ.get("TUNE_ORIG_WORKING_DIR") or os.getcwd())


def results_dir(spec: InitFrom) -> Path:
    if spec.results is not None:
        p = Path(spec.results).expanduser()
    else:
        root = Path(spec.root or os.environ.get("RAYSTUDY_RESULTS") or "results").expanduser()
        p = root / spec.study
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
    from .spec.schema import TrialConfig
    try:
        return TrialConfig.model_validate(config).model_dump(mode="json")
    except ValidationError:
        return config


def _load_plan(out: Path, spec: InitFrom) -> list[dict]:
    plan = out / "study.json"
    if not plan.exists():
        where = f"study '{spec.study}'" if spec.study else f"'{out}'"
        raise StudyError(f"no study results for {where} (no {plan})",
                         path=f"{PATH}.{'study' if spec.study else 'results'}",
                         hint="run the source study first, or point 'results' / 'root' at its results folder")
    trials = json.loads(plan.read_text()).get("trials", [])
    return [{**t, "config": _with_defaults(t.get("config") or {})} for t in trials]


def _trial_rows(out: Path) -> dict[str, dict]:
    p = out / "trials.parquet"
    if not p.exists():
        return {}
    import pandas as pd
    return {r["trial_id"]: r for r in pd.read_parquet(p).to_dict("records")}


def find_trial(spec: InitFrom) -> tuple[str, Path]:
    """(trial_id, results folder) of the one completed source trial."""
    out = results_dir(spec)
    trials = _load_plan(out, spec)
    rows = _trial_rows(out)
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
    row = _trial_rows(out).get(tid) or {}
    ck = row.get("checkpoint")
    if isinstance(ck, str) and ck:
        p = Path(ck)
        p = p if p.is_absolute() else out / p
        if (p / MODEL_FILE).exists():
            return p / MODEL_FILE
    # Ray's folder: <out>/<experiment>/<trial_id>/checkpoint_000NNN/; the final report is the last.
    found = sorted(out.glob(f"*/{tid}/checkpoint_*/{MODEL_FILE}"), key=lambda f: (f.parent.name, f.stat().st_mtime))
    if not found:
        raise StudyError(f"trial {tid} of {out} has no final checkpoint with {MODEL_FILE}", path=PATH,
                         hint="the source study must run with raystudy >= this version, which saves the final "
                              "weights; re-run that trial (`raystudy run --retry-failed` or delete its row)")
    return found[-1]


def load_init_state(d: dict | InitFrom, model: torch.nn.Module | None = None) -> dict:
    """Resolve `init_from` to a state dict (CPU tensors), checked against `model` if given."""
    spec = parse(d)
    tid, out = find_trial(spec)
    path = checkpoint_file(tid, out)
    # weights_only: a checkpoint is data, never code.
    state = torch.load(path, map_location="cpu", weights_only=True)
    if model is not None:
        own = model.state_dict()
        if spec.strict:
            missing = sorted(set(own) - set(state))
            extra = sorted(set(state) - set(own))
            bad = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
            if missing or extra or bad:
                parts = [f"{name}: {', '.join(ks[:4])}{' ...' if len(ks) > 4 else ''}"
                         for name, ks in (("missing", missing), ("unexpected", extra), ("shape differs", bad)) if ks]
                raise StudyError(f"the weights of trial {tid} ({path}) do not fit this model ({'; '.join(parts)})",
                                 path=PATH, hint="warm start from a trial with the same model section, "
                                                 "or set strict: false to load only what matches")
        else:
            state = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
            state = {**own, **state}
    return state
