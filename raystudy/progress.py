"""The driver's Tune callback: records each trial in the tables as it finishes and prints
one progress line per trial. Imported by runner.run_study only when a run starts Ray, so
`raystudy validate` and `raystudy plan` never import Ray.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from ray import tune

from .healthview import verdict, warning_line
from .layout import ERROR_FILE, MODEL_FILE, STOPPED_FILE, Layout
from .results import ResultStore, error_reason


def _say(msg: str) -> None:
    print(msg, flush=True)


def _trial_error(trial) -> str:
    """One line from the error Tune just wrote: its staging copy exists at once, the copy in
    the experiment folder only after the next sync."""
    try:
        staged = getattr(trial, "error_file", None)
        if staged and Path(staged).is_file():
            return error_reason(Path(staged).read_text(errors="replace"))
        return error_reason(trial.get_error())
    except Exception:  # noqa: BLE001 - the reason is best effort, the record is not
        return "trial failed (no error file)"


class StudyCallback(tune.Callback):
    """Records trials in the tables as they finish and prints progress; `summary` is the
    run's RunSummary (counts and failures), `driver_faults` the test-only driver faults."""

    def __init__(self, store: ResultStore, summary, n: int, verbose: bool,
                 driver_faults: list[dict] | None = None):
        self.store, self.summary, self.n, self.verbose = store, summary, n, verbose
        self.driver_faults = list(driver_faults or [])
        self.last: dict[str, dict] = {}
        self.epochs: dict[str, list[dict]] = {}
        self.finished = 0
        self.recorded = 0
        self.completed_here = 0
        self.t0 = time.perf_counter()

    def _tid(self, trial) -> str:
        return trial.config["trial"]["trial_id"]

    def on_trial_result(self, iteration, trials, trial, result, **info):
        tid = self._tid(trial)
        if result.get("final"):
            self.last[tid] = result
        elif "epoch" in result:
            self.epochs.setdefault(tid, []).append(dict(result))
            self._driver_fault(result["epoch"])

    def _driver_fault(self, epoch: int) -> None:
        # Test only (RAYSTUDY_FAULT=driver-sigint@E / driver-sigkill@E): once a trial
        # has completed, the driver signals itself when some trial reports epoch E.
        for f in list(self.driver_faults):
            if f["epoch"] == epoch and self.completed_here > 0:
                self.driver_faults.remove(f)
                os.kill(os.getpid(), signal.SIGINT if f["kind"] == "driver-sigint" else signal.SIGKILL)

    def on_trial_complete(self, iteration, trials, trial, **info):
        tid = self._tid(trial)
        last = self.last.get(tid) or {}
        if last.get("_failed"):
            self._failed(trial, last["_failed"], last)
            return
        if not last:
            # Complete without a final report: a scheduler (tune.scheduler) stopped it early.
            self._stopped(trial)
            return
        self.store.record(trial.config["trial"], "completed", last or None,
                          epochs=self._seen_epochs(tid), checkpoint=self._final_checkpoint(trial),
                          extra={"epoch_reports": len(self.epochs.get(tid, []))})
        self.recorded += 1
        self.completed_here += 1
        self.summary.completed += 1
        rf = last.get("resumed_from_epoch") or 0
        self._progress(trial, "done" + (f" (resumed from epoch {rf})" if rf else ""))
        self._health(trial)

    def _stopped(self, trial) -> None:
        tid = self._tid(trial)
        seen = self._seen_epochs(tid)
        epoch = seen[-1].get("epoch", 0) if seen else 0
        self.store.record(trial.config["trial"], "stopped", None, epochs=seen,
                          checkpoint=self._final_checkpoint(trial),
                          extra={"epochs_run": epoch, "stopped_at_epoch": epoch,
                                 "epoch_reports": len(self.epochs.get(tid, []))})
        self.recorded += 1
        self.summary.stopped += 1
        try:
            # So `raystudy collect` tells it from a trial cut off by Ctrl-C (neither has a final report).
            Path(trial.path).mkdir(parents=True, exist_ok=True)
            (Path(trial.path) / STOPPED_FILE).write_text(json.dumps({"stopped_at_epoch": epoch}))
        except (OSError, TypeError):
            pass
        self._progress(trial, f"stopped early after epoch {epoch}")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._failed(trial, _trial_error(trial), None, trace=True)

    def _failed(self, trial, reason: str, result: dict | None, trace: bool = False) -> None:
        tid = self._tid(trial)
        seen = self._seen_epochs(tid)
        epochs_run = (result or {}).get("epochs_run") or (seen[-1].get("epoch", 0) if seen else 0)
        self.store.record(trial.config["trial"], "error", result, error=reason, epochs=seen,
                          extra={"epochs_run": epochs_run,
                                 "epoch_reports": len(self.epochs.get(tid, []))})
        self.recorded += 1
        self.summary.failed += 1
        self.summary.failures.append((tid, reason))
        # Tune copies error.txt from its staging folder into the experiment folder.
        where = f"; full trace in {Path(trial.path) / ERROR_FILE}" if trace and trial.path else ""
        self._progress(trial, f"FAILED: {reason}{where}")

    def _health(self, trial) -> None:
        """One warning line when the trial just recorded was judged unhealthy (raystudy.health)."""
        t = trial.config["trial"]
        ok, flags = verdict(self.store.rows.get(t["trial_id"], {}))
        if ok is False:
            self.summary.unhealthy.append((t["trial_id"], flags))
            if self.verbose:
                _say(warning_line(t["trial_id"], t["params"], flags))

    def _final_checkpoint(self, trial) -> str | None:
        # Tune's latest checkpoint is the final report's; the layout's rule confirms it.
        named = getattr(getattr(trial, "checkpoint", None), "path", None)
        found = Layout(self.store.out).checkpoint(self._tid(trial), MODEL_FILE, named=named)
        return str(found) if found is not None else None

    def _seen_epochs(self, tid: str) -> list[dict]:
        # After a retry the same epoch can arrive twice: keep the latest of each.
        by_epoch: dict[int, dict] = {}
        for e in self.epochs.get(tid, []):
            by_epoch[int(e["epoch"])] = e
        return [by_epoch[k] for k in sorted(by_epoch)]

    def _progress(self, trial, what: str) -> None:
        self.finished += 1
        if not self.verbose:
            return
        el = time.perf_counter() - self.t0
        left = self.n - self.finished
        eta = el / self.finished * left if self.finished else 0
        t = trial.config["trial"]
        params = ", ".join(f"{k}={v}" for k, v in t["params"].items())
        acc = (self.last.get(t["trial_id"]) or {}).get("accuracy")
        acc_txt = f" accuracy={acc:.4f}" if isinstance(acc, (int, float)) else ""
        _say(f"[{self.finished}/{self.n}] {t['trial_id']} ({params}) {what}{acc_txt} | "
             f"elapsed {_fmt(el)}, ETA {_fmt(eta)}")


def _fmt(s: float) -> str:
    s = int(round(s))
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"
