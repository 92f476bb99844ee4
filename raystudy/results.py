"""Trial results -> tidy parquet tables, written atomically as trials finish.

Where they live is raystudy.layout's business; what they hold:
  trials.parquet   one row per trial: trial_id, status ('completed' | 'error'), error (one
                   line), checkpoint (the final checkpoint folder holding model.pt, relative
                   to the results folder so the folder can move: warm starts and transfer
                   attacks load it through raystudy.layout), runs (times the trial was
                   recorded; a re-run study skips completed trials so it stays 1), varied
                   config paths (dotted column names), scalar metrics, timings, and the
                   code.* / env.* provenance columns (raystudy.provenance)
  curves.parquet   long format: trial_id, metric, x, accuracy / consistency / ...
  epochs.parquet   per-epoch training logs (loss, lr, augmentation, ε, ...)
  outcomes.parquet per-example outcomes: trial_id, metric, x, n, examples, correct (np.packbits
                   bytes), consistent (bytes or null); see raystudy.stats and analysis.paired
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import pandas as pd

from .health import HealthOptions, summary_columns
from .layout import CURVES, EPOCHS, OUTCOMES, PLAN, TRIALS, Layout
from .spec.paths import get_path, has_path
from .stats import decode

__all__ = ["CURVES", "EPOCHS", "OUTCOMES", "PLAN", "TRIALS", "ResultStore", "config_columns", "error_reason",
           "load_tables", "write_atomic", "write_json_atomic", "STANDARD_COLUMNS"]

# Always-present config columns, so tables are readable without the plan.
STANDARD_COLUMNS = ("model.arch", "train.method.name", "data.dataset", "seed")
OUTCOME_COLUMNS = ["trial_id", "metric", "x", "n", "examples", "correct", "consistent"]
_SKIP = {"_curves", "_outcomes", "config", "trial_id", "timestamp", "time_this_iter_s", "time_total_s", "pid",
         "hostname", "node_ip", "time_since_restore", "iterations_since_restore", "checkpoint_dir_name",
         "training_iteration", "date", "done", "final", "should_checkpoint", "experiment_tag",
         "_history", "_failed"}


def _cell(v: Any) -> Any:
    """Parquet needs one type per column: lists/dicts become JSON text."""
    if isinstance(v, (list, tuple, dict)):
        return json.dumps(v, sort_keys=True)
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def write_atomic(df: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        df.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json_atomic(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            # Key order is kept: it carries meaning (report columns, config order as written).
            json.dump(obj, f, indent=1, default=str)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def config_columns(trial: dict) -> dict[str, Any]:
    cols = {k: _cell(v) for k, v in trial.get("params", {}).items()}
    cfg = trial.get("config", {})
    for c in STANDARD_COLUMNS:
        if c not in cols and has_path(cfg, c):
            cols[c] = _cell(get_path(cfg, c))
    return cols


def error_reason(text: str | None) -> str:
    """One line from a Ray error trace: the last 'Type: message' line."""
    if not text:
        return "unknown error"
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    for ln in reversed(lines):
        head = ln.split(":", 1)[0]
        if head and (head.endswith("Error") or head.endswith("Exception") or head.endswith("Loss")
                     or head.endswith("Interrupt")) and " " not in head:
            return _with_hint(ln[:500])
    return _with_hint(lines[-1][:500]) if lines else "unknown error"


def _with_hint(line: str) -> str:
    if "OutOfMemoryError" in line or "out of memory" in line.lower():
        return line + (" (lower train.batch_size / train.eval_batch_size, or give each trial more memory: "
                       "a larger resources.gpu share or fewer concurrent trials)")
    return line


class ResultStore:
    """The study's tables; thread-safe, rewritten atomically after each change."""

    def __init__(self, out: Path, health: HealthOptions | None = None):
        self.out = Path(out)
        # The study's `health:` options: `record` judges each trial's health values with them.
        self.health = health
        self.lock = threading.Lock()
        self.rows: dict[str, dict] = {}
        self.curves: dict[str, list[dict]] = {}
        self.epochs: dict[str, list[dict]] = {}
        self.outcomes: dict[str, list[dict]] = {}
        self._load()

    @classmethod
    def empty(cls, out: Path) -> "ResultStore":
        """A store that ignores the tables on disk (for rebuilding them: `raystudy collect`)."""
        self = cls.__new__(cls)
        self.out, self.lock, self.health = Path(out), threading.Lock(), None
        self.rows, self.curves, self.epochs, self.outcomes = {}, {}, {}, {}
        return self

    def __getstate__(self):
        # Ray pickles the Tuner (and its callbacks) into the experiment folder.
        d = dict(self.__dict__)
        d.pop("lock", None)
        return d

    def __setstate__(self, d):
        self.__dict__.update(d)
        self.lock = threading.Lock()

    def _load(self) -> None:
        layout = Layout(self.out)
        for r in layout.records(TRIALS):
            self.rows[r["trial_id"]] = {k: v for k, v in r.items() if not _isnan(v)}
        for r in layout.records(CURVES):
            self.curves.setdefault(r["trial_id"], []).append(r)
        for r in layout.records(EPOCHS):
            self.epochs.setdefault(r["trial_id"], []).append(r)
        for r in layout.records(OUTCOMES):
            self.outcomes.setdefault(r["trial_id"], []).append(r)

    def status_of(self, trial_id: str) -> str | None:
        r = self.rows.get(trial_id)
        return r.get("status") if r else None

    def record(self, trial: dict, status: str, result: dict | None = None, error: str | None = None,
               epochs: list[dict] | None = None, extra: dict | None = None,
               checkpoint: str | None = None, runs: int | None = None, flush: bool = True) -> None:
        """One trial's row (replacing any earlier one); `runs` counts how often it was recorded."""
        tid = trial["trial_id"]
        row: dict[str, Any] = {"trial_id": tid, "status": status, "error": error,
                               "checkpoint": Layout(self.out).relative(checkpoint)}
        row.update(config_columns(trial))
        # The code the driver shipped with the trial (raystudy.provenance): errors carry it too.
        row.update({k: _cell(v) for k, v in (trial.get("code") or {}).items()})
        curves, outcomes = [], []
        if result:
            for k, v in result.items():
                if k in _SKIP or k.startswith("config/"):
                    continue
                row[k] = _cell(v)
            if result.get("_curves"):
                curves = json.loads(result["_curves"])
            outcomes = _outcome_rows(tid, result.get("_outcomes"))
            if result.get("_history"):
                # The trainable's own history survives restarts (restored from checkpoints),
                # so it beats the epoch results this driver happened to see.
                epochs = json.loads(result["_history"])
        if extra:
            row.update({k: _cell(v) for k, v in extra.items()})
        # health.ok / health.flags from the values the worker measured (raystudy.health.judge).
        row.update(summary_columns(row, getattr(self, "health", None)))
        with self.lock:
            prev = self.rows.get(tid, {})
            row["runs"] = runs if runs is not None else int(prev.get("runs", 0) or 0) + 1
            self.rows[tid] = row
            changed = {TRIALS}
            if curves or status == "completed":
                changed |= _replace(self.curves, tid, [{"trial_id": tid, **c} for c in curves], CURVES)
            if outcomes or status == "completed":
                changed |= _replace(self.outcomes, tid, outcomes, OUTCOMES)
            if epochs is not None:
                changed |= _replace(self.epochs, tid, [
                    {"trial_id": tid, **{k: _cell(v) for k, v in e.items()
                                         if k not in _SKIP and not k.startswith("config/")}}
                    for e in epochs], EPOCHS)
            if flush:
                self.flush(changed)

    def flush(self, tables: set[str] | None = None) -> None:
        """Rewrite the tables (`tables`: only these, and any not written yet). A trial's record
        rewrites only the tables it changed: every rewrite is the whole study's table, and the
        driver doing it is the loop that starts the next trials (benchmarks/RESULTS.md)."""
        def due(name: str) -> bool:
            return tables is None or name in tables or not (self.out / name).exists()
        rows = list(self.rows.values())
        if rows and due(TRIALS):
            write_atomic(pd.DataFrame(rows), self.out / TRIALS)
        if due(CURVES):
            curves = [c for cs in self.curves.values() for c in cs]
            write_atomic(pd.DataFrame(curves, columns=None if curves else ["trial_id", "metric", "x"]),
                         self.out / CURVES)
        if due(EPOCHS):
            epochs = [e for es in self.epochs.values() for e in es]
            if epochs:
                write_atomic(pd.DataFrame(epochs), self.out / EPOCHS)
        if due(OUTCOMES):
            outcomes = [o for os_ in self.outcomes.values() for o in os_]
            if outcomes or (self.out / OUTCOMES).exists():
                write_atomic(pd.DataFrame(outcomes, columns=OUTCOME_COLUMNS), self.out / OUTCOMES)


def _replace(table: dict[str, list[dict]], tid: str, new: list[dict], name: str) -> set[str]:
    """Put a trial's rows of one table; {name} when that changed the table, else nothing."""
    if table.get(tid) == new:
        return set()
    table[tid] = new
    return {name}


def _outcome_rows(tid: str, text: str | None) -> list[dict]:
    """outcomes.parquet rows from the final result's `_outcomes` JSON (bits base64 -> bytes)."""
    rows = []
    for o in json.loads(text) if text else []:
        con = o.get("consistent")
        rows.append({"trial_id": tid, "metric": o["metric"], "x": float(o["x"]), "n": int(o["n"]),
                     "examples": o["examples"], "correct": decode(o["correct"]),
                     "consistent": None if con is None else decode(con)})
    return rows


def _isnan(v) -> bool:
    return isinstance(v, float) and math.isnan(v)


def load_tables(results_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(trials, curves) of a results folder; empty frames if nothing finished yet."""
    layout = Layout(results_dir)
    return (layout.read_table(TRIALS, ["trial_id", "status", "error"]),
            layout.read_table(CURVES, ["trial_id", "metric", "x"]))
