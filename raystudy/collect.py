"""`raystudy collect DIR`: rebuild the result tables from the Ray Tune experiment folders.

The tables are normally written by the driver as trials finish. If they are lost or
suspect (a driver killed mid-write cannot corrupt them: writes are atomic, but a
folder can be copied half, or a table deleted), everything needed is also in the
`tune-*/<trial_id>/` folders Ray Tune keeps: params.json (the trial), result.json
(every reported result; the final one carries the metrics, curves and the epoch
history), error.txt, and the checkpoints.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import StudyError
from .health import HealthOptions
from .layout import (ERROR_FILE, MODEL_FILE, PARAMS_FILE, PLAN, RESULT_FILE, STATE_FILE, STOPPED_FILE, Layout,
                     newest_checkpoint)
from .results import ResultStore, error_reason, write_json_atomic


def _results(path: Path) -> list[dict]:
    """result.json is JSON lines; a driver killed mid-write can leave a torn last line."""
    out = []
    if not path.is_file():
        return out
    for line in path.read_text(errors="replace").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def read_trial_dir(tdir: Path) -> dict | None:
    """One trial folder of one experiment -> its outcome, or None if it never finished."""
    try:
        trial = json.loads((tdir / PARAMS_FILE).read_text())["trial"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    results = _results(tdir / RESULT_FILE)
    finals = [r for r in results if r.get("final")]
    epochs = [r for r in results if "epoch" in r and not r.get("final")]
    rec = {"trial": trial, "epochs": epochs, "result": None, "error": None, "checkpoint": None}
    if finals and not finals[-1].get("_failed"):
        final = newest_checkpoint(tdir, MODEL_FILE)
        rec.update(status="completed", result=finals[-1], checkpoint=str(final.resolve()) if final else None)
    elif finals:
        rec.update(status="error", result=finals[-1], error=finals[-1]["_failed"])
    elif (tdir / ERROR_FILE).is_file():
        rec.update(status="error", error=error_reason((tdir / ERROR_FILE).read_text(errors="replace")))
    elif (tdir / STOPPED_FILE).is_file():
        last = newest_checkpoint(tdir, STATE_FILE)
        rec.update(status="stopped", checkpoint=str(last.resolve()) if last else None)
    else:
        return None
    return rec


def _recorded_health(out: Path):
    """The study's `health:` options as recorded in study.json (defaults without one), so the
    rebuilt rows are judged as `raystudy run` judged them."""
    try:
        plan = json.loads((out / PLAN).read_text())
    except (OSError, ValueError):
        plan = {}
    return HealthOptions.model_validate(plan.get("health") or {})


def collect(out: Path) -> int:
    """Rebuild trials/curves/epochs.parquet under `out` (a results/<study> folder).

    Per trial id: the newest completed outcome wins, else the newest error; `runs` is
    the number of experiments in which the trial ended. Returns the number of trials.
    """
    out = Path(out)
    exps = Layout(out).experiments()[::-1]   # oldest first, so a later outcome replaces an earlier one
    if not exps:
        raise StudyError(f"no Ray Tune experiment folders (tune-*) in '{out}'", path="DIR",
                         hint="give a results folder such as results/quickstart")
    chosen: dict[str, dict] = {}
    runs: dict[str, int] = {}
    for exp in exps:
        for tdir in sorted(p for p in exp.iterdir() if p.is_dir()):
            rec = read_trial_dir(tdir)
            if rec is None:
                continue
            tid = rec["trial"]["trial_id"]
            runs[tid] = runs.get(tid, 0) + 1
            prev = chosen.get(tid)
            if prev is None or rec["status"] == "completed" or prev["status"] != "completed":
                chosen[tid] = rec
    store = ResultStore.empty(out)
    store.health = _recorded_health(out)
    for tid, rec in chosen.items():
        seen: dict[int, dict] = {}
        for e in rec["epochs"]:
            seen[int(e["epoch"])] = e
        epochs = [seen[k] for k in sorted(seen)]
        extra = {"epoch_reports": len(rec["epochs"])}
        if rec["status"] == "error":
            extra["epochs_run"] = (rec["result"] or {}).get("epochs_run") or (max(seen) if seen else 0)
        elif rec["status"] == "stopped":
            extra["epochs_run"] = extra["stopped_at_epoch"] = max(seen) if seen else 0
        store.record(rec["trial"], rec["status"], rec["result"], error=rec["error"], epochs=epochs,
                     checkpoint=rec["checkpoint"], runs=runs[tid], extra=extra, flush=False)
    store.flush()
    if not (out / PLAN).exists():
        # Enough for `raystudy status`; `raystudy run` writes the full plan.
        write_json_atomic({"name": out.name, "file": None, "base": None,
                           "trials": [{k: rec["trial"][k] for k in ("trial_id", "params", "config")}
                                      for rec in chosen.values()]}, out / PLAN)
    return len(chosen)
