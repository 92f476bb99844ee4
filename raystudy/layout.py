"""The results folder of one study: the only module that knows its file names and layout.

    results/<study>/                      Layout(out)
      study.json                          the plan: every trial's id, params and config, the base
      trials.parquet                      one row per trial (results.ResultStore)
      curves.parquet, epochs.parquet      long-format curves, per-epoch logs
      outcomes.parquet                    per-example outcomes of each curve point (packed bits)
      transfer.parquet                    the matrix of the `after: transfer` step
      tune-<YYYYmmdd-HHMMSS>[-k]/         one Ray Tune experiment per `raystudy run`
        <trial_id>/params.json, result.json, error.txt, stopped.json
        <trial_id>/checkpoint_<N>/model.pt   the final weights (the trial's last report)
        <trial_id>/checkpoint_<N>/state.pt   the full training state, every checkpoint_every epochs
                                             (and beside model.pt; Tune keeps the newest only)

Paths stored in the tables are relative to the results folder (`relative`), so a folder that
is moved, copied or mounted elsewhere keeps its warm starts and transfer matrix; an absolute
path written by an older raystudy is read as the same tune-*/... path inside this folder when
that exists (`local`).

Which checkpoint, for every reader (one rule): a folder already named for the trial (the
`checkpoint` column of trials.parquet, Tune's own latest checkpoint) if it holds the file;
else the experiments newest first (by the start time in their names), and inside one the
trial's highest checkpoint number; the first folder holding the file wins. The file is
model.pt for a trial's final weights and state.pt for where a cut-off trial resumes. File
times never decide (copies and syncs change them).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd

from .errors import StudyError

PLAN = "study.json"
TRIALS = "trials.parquet"
CURVES = "curves.parquet"
EPOCHS = "epochs.parquet"
TRANSFER = "transfer.parquet"
# Per-example outcomes of the metrics (which evaluated images were right), see analysis/paired.py.
OUTCOMES = "outcomes.parquet"
# The verdicts of the study's claims (analysis/claims.py).
CLAIMS = "claims.parquet"
MODEL_FILE = "model.pt"
STATE_FILE = "state.pt"
ERROR_FILE = "error.txt"
STOPPED_FILE = "stopped.json"   # the driver's mark on a trial a scheduler stopped early
PARAMS_FILE = "params.json"
RESULT_FILE = "result.json"
EXPERIMENT_PREFIX = "tune-"
CHECKPOINT_PREFIX = "checkpoint_"
TABLES = (TRIALS, CURVES, EPOCHS, OUTCOMES)


def checkpoint_number(p: Path) -> int:
    try:
        return int(p.name.rsplit("_", 1)[-1])
    except ValueError:
        return -1


def newest_checkpoint(trial_dir: Path, marker: str) -> Path | None:
    """The trial folder's highest-numbered checkpoint_* holding `marker` (see the module doc)."""
    if not trial_dir.is_dir():
        return None
    for c in sorted(trial_dir.glob(CHECKPOINT_PREFIX + "*"), key=checkpoint_number, reverse=True):
        if (c / marker).is_file():
            return c
    return None


def _start_time(exp: Path) -> tuple[str, int, str]:
    # tune-20250101-120000, then tune-20250101-120000-2, -3, ... within the same second.
    parts = exp.name[len(EXPERIMENT_PREFIX):].split("-")
    k = int(parts[2]) if len(parts) > 2 and parts[2].isdigit() else 1
    return "-".join(parts[:2]), k, exp.name


class Layout:
    """Paths and readers of one results folder `out` (results/<study>)."""

    def __init__(self, out: str | Path):
        self.out = Path(out)

    def __truediv__(self, name: str) -> Path:
        return self.out / name

    # ---------------------------------------------------------------- experiments

    def experiments(self) -> list[Path]:
        """tune-* folders, newest first."""
        found = [p for p in self.out.glob(EXPERIMENT_PREFIX + "*") if p.is_dir()]
        return sorted(found, key=_start_time, reverse=True)

    def new_experiment_name(self) -> str:
        name = f"{EXPERIMENT_PREFIX}{time.strftime('%Y%m%d-%H%M%S')}"
        i = 2
        while (self.out / name).exists():
            name = f"{EXPERIMENT_PREFIX}{time.strftime('%Y%m%d-%H%M%S')}-{i}"
            i += 1
        return name

    def has_results(self) -> bool:
        return (self / TRIALS).exists() or (self / PLAN).exists() or bool(self.experiments())

    # ---------------------------------------------------------------- checkpoints

    def relative(self, path: str | Path | None) -> str | None:
        """`path` as stored in a table: relative to this folder when inside it."""
        if path is None or not str(path):
            return None
        p = Path(path)
        if not p.is_absolute():
            return p.as_posix()
        for base in (self.out.absolute(), self.out.resolve()):
            try:
                return p.relative_to(base).as_posix()
            except ValueError:
                continue
        return str(p)

    def local(self, path: str | Path) -> Path:
        """A stored path resolved in this folder: relative ones against it; an absolute one
        from where the folder used to be is re-rooted at its first tune-* part when this
        folder holds that (a moved or copied folder reads its own files, not the original's)."""
        p = Path(path)
        if not p.is_absolute():
            return self.out / p
        parts = p.parts
        for i, part in enumerate(parts):
            if part.startswith(EXPERIMENT_PREFIX):
                mine = self.out.joinpath(*parts[i:])
                if mine.exists():
                    return mine
                break
        return p

    def checkpoint(self, trial_id: str, marker: str, named: str | Path | None = None) -> Path | None:
        """The checkpoint folder of `trial_id` holding `marker`, by the module's one rule."""
        if isinstance(named, (str, Path)) and str(named):
            p = self.local(named)
            p = p.parent if p.name == marker else p
            if (p / marker).is_file():
                return p.resolve()
        for exp in self.experiments():
            c = newest_checkpoint(exp / trial_id, marker)
            if c is not None:
                return c.resolve()
        return None

    def final_weights(self, trial_id: str, named: str | Path | None = None) -> Path | None:
        """model.pt of the trial's final checkpoint (`named`: its `checkpoint` column)."""
        c = self.checkpoint(trial_id, MODEL_FILE, named)
        return c / MODEL_FILE if c is not None else None

    def resume_points(self, trial_ids) -> dict[str, str]:
        """{trial id: checkpoint folder with state.pt} for trials cut off in an earlier run."""
        found = {tid: self.checkpoint(tid, STATE_FILE) for tid in trial_ids}
        return {tid: str(c) for tid, c in found.items() if c is not None}

    # ---------------------------------------------------------------- readers

    def read_plan(self) -> dict | None:
        """study.json, or None when there is none yet."""
        path = self / PLAN
        if not path.exists():
            return None
        try:
            plan = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise StudyError(f"cannot read {path} ({e})", file=str(path),
                             hint="running the study again (`raystudy run`) writes it anew") from None
        if not isinstance(plan, dict):
            raise StudyError(f"{path} does not hold a study plan", file=str(path),
                             hint="running the study again (`raystudy run`) writes it anew")
        return plan

    def read_table(self, name: str, columns: list[str] | None = None) -> pd.DataFrame:
        """A table of the folder; an empty frame with `columns` when it does not exist yet."""
        path = self / name
        if not path.exists():
            return pd.DataFrame(columns=columns)
        try:
            return pd.read_parquet(path)
        except Exception as e:  # noqa: BLE001 - any unreadable table gets the same advice
            first = str(e).splitlines()[0] if str(e) else ""
            raise StudyError(f"cannot read {path} ({type(e).__name__}: {first})", file=str(path),
                             hint=f"rebuild the tables from the Ray Tune folders with `raystudy collect {self.out}`"
                             ) from None

    def records(self, name: str) -> list[dict]:
        return self.read_table(name).to_dict("records")

    def trial_rows(self) -> dict[str, dict]:
        """trials.parquet by trial id (empty when there is no table)."""
        return {r["trial_id"]: r for r in self.records(TRIALS)}

    # ---------------------------------------------------------------- the folder

    def ensure_writable(self) -> None:
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            probe = self.out / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as e:
            raise StudyError(f"results folder '{self.out}' is not writable ({e.strerror or e})", path="--results",
                             hint="choose another folder with --results DIR") from None

    def move_aside(self) -> Path:
        """Rename the folder to <name>.old-<time>[-k] (results are never deleted)."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        dest = self.out.with_name(f"{self.out.name}.old-{stamp}")
        i = 2
        while dest.exists():
            dest = self.out.with_name(f"{self.out.name}.old-{stamp}-{i}")
            i += 1
        self.out.rename(dest)
        return dest
