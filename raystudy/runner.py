"""Build and run the Ray Tune experiment of a study; resume by trial id.

Ray lives here and in trainable.py only. Trials are expanded and validated by
`raystudy.spec` before Ray starts; finished trials (by their config hash) are
skipped on a re-run, so running a study again continues it.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import StudyError
from .results import PLAN, ResultStore, error_reason, write_json_atomic
from .spec.load import StudyDocument


@dataclass
class RunSummary:
    out: Path
    total: int
    completed: int = 0
    failed: int = 0
    skipped: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    wall_s: float = 0.0
    dashboard_url: str | None = None


def _say(msg: str) -> None:
    print(msg, flush=True)


def init_ray(address: str | None = None, dashboard: bool = True, num_cpus: int | None = None,
             num_gpus: int | None = None) -> str | None:
    """Connect to a cluster (`address`) or start a local Ray; returns the dashboard URL."""
    import ray
    if ray.is_initialized():
        ctx = ray.get_runtime_context()
        return getattr(ctx, "dashboard_url", None) or None
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    try:
        if address:
            info = ray.init(address=address, logging_level="ERROR", log_to_driver=True)
        else:
            kwargs: dict[str, Any] = dict(include_dashboard=dashboard, logging_level="ERROR")
            if dashboard:
                # Local only unless the user binds it elsewhere themselves.
                kwargs["dashboard_host"] = "127.0.0.1"
            if num_cpus is not None:
                kwargs["num_cpus"] = num_cpus
            if num_gpus is not None:
                kwargs["num_gpus"] = num_gpus
            info = ray.init(**kwargs)
    except (ConnectionError, TimeoutError, ValueError, RuntimeError) as e:
        if address:
            raise StudyError(f"cannot reach the Ray cluster at '{address}': {str(e).splitlines()[0]}",
                             path="--address", hint="start it with `ray start --head` or check the address") from None
        raise
    url = getattr(info, "dashboard_url", None)
    return f"http://{url}" if url and not str(url).startswith("http") else url


def _check_resources(study: StudyDocument) -> None:
    import ray
    res = study.spec.resources
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    best_cpu = max((n["Resources"].get("CPU", 0) for n in nodes), default=0)
    best_gpu = max((n["Resources"].get("GPU", 0) for n in nodes), default=0)
    if res.cpu > best_cpu or res.gpu > best_gpu:
        raise StudyError(f"no node can satisfy cpu={res.cpu:g}, gpu={res.gpu:g} "
                         f"(largest node: cpu={best_cpu:g}, gpu={best_gpu:g})", file=study.file,
                         path="resources", hint="lower resources.cpu / resources.gpu or add a node that has them")


def _writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise StudyError(f"results folder '{out}' is not writable ({e.strerror})", path="--results",
                         hint="choose another folder with --results DIR") from None


def plan_record(study: StudyDocument) -> dict:
    return {
        "name": study.name,
        "file": study.file,
        "description": study.spec.description,
        "base": study.base_config(),
        "report": study.spec.report,
        "trials": [t.to_ray() for t in study.trials],
    }


def run_study(study: StudyDocument, results: str | Path = "results", *, address: str | None = None,
              max_concurrent: int | None = None, dashboard: bool = True, retry_failed: bool = False,
              verbose: bool = True) -> RunSummary:
    t0 = time.perf_counter()
    out = Path(results) / study.name
    _writable(out)
    store = ResultStore(out)
    write_json_atomic(plan_record(study), out / PLAN)
    summary = RunSummary(out=out, total=len(study.trials))
    todo = []
    for t in study.trials:
        st = store.status_of(t.trial_id)
        if st == "completed" or (st == "error" and not retry_failed):
            summary.skipped += 1
            if st == "completed":
                summary.completed += 1
            else:
                summary.failed += 1
        else:
            todo.append(t)
    if verbose:
        _say(f"raystudy: study '{study.name}': {len(study.trials)} trials, {len(todo)} to run"
             + (f", {summary.skipped} already recorded (resuming)" if summary.skipped else "")
             + f"; results in {out}")
    if not todo:
        summary.wall_s = time.perf_counter() - t0
        return summary

    import ray
    from ray import tune

    from .data import load
    from .spec.schema import DataSpec
    from .trainable import data_key, trainable

    summary.dashboard_url = init_ray(address, dashboard)
    if verbose and summary.dashboard_url:
        _say(f"raystudy: Ray dashboard at {summary.dashboard_url}")
    _check_resources(study)
    # Each distinct dataset is loaded once here and shipped through the object store.
    bundles = {}
    for t in todo:
        key = data_key(t.config.get("data", {}))
        if key not in bundles:
            bundles[key] = load(DataSpec.model_validate(t.config.get("data", {})))
    res = study.spec.resources
    fn = tune.with_parameters(trainable, bundles=bundles, cpus=res.cpu)
    fn = tune.with_resources(fn, {"cpu": res.cpu, "gpu": res.gpu})
    cb = StudyCallback(store, summary, len(todo), verbose)
    tuner = tune.Tuner(
        fn,
        param_space={"trial": tune.grid_search([t.to_ray() for t in todo])},
        tune_config=tune.TuneConfig(
            max_concurrent_trials=max_concurrent or study.spec.tune.max_concurrent,
            trial_name_creator=lambda tr: tr.config["trial"]["trial_id"],
            trial_dirname_creator=lambda tr: tr.config["trial"]["trial_id"],
            reuse_actors=False,
        ),
        run_config=tune.RunConfig(
            name=f"tune-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=str(out.resolve()),
            callbacks=[cb],
            failure_config=tune.FailureConfig(max_failures=study.spec.tune.retries),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            verbose=0,
        ),
    )
    tuner.fit()
    summary.wall_s = time.perf_counter() - t0
    return summary


class StudyCallback:
    """Records trials in the tables as they finish and prints progress."""

    def __new__(cls, *a, **k):
        # Subclass tune.Callback lazily so importing this module needs no Ray.
        from ray import tune

        class _CB(tune.Callback):
            def __init__(self, store: ResultStore, summary: RunSummary, n: int, verbose: bool):
                self.store, self.summary, self.n, self.verbose = store, summary, n, verbose
                self.last: dict[str, dict] = {}
                self.epochs: dict[str, list[dict]] = {}
                self.finished = 0
                self.t0 = time.perf_counter()

            def _tid(self, trial) -> str:
                return trial.config["trial"]["trial_id"]

            def on_trial_result(self, iteration, trials, trial, result, **info):
                tid = self._tid(trial)
                if result.get("final"):
                    self.last[tid] = result
                elif "epoch" in result:
                    self.epochs.setdefault(tid, []).append(dict(result))

            def on_trial_complete(self, iteration, trials, trial, **info):
                tid = self._tid(trial)
                self.store.record(trial.config["trial"], "completed", self.last.get(tid),
                                  epochs=self.epochs.get(tid))
                self.summary.completed += 1
                self._progress(trial, "done")

            def on_trial_error(self, iteration, trials, trial, **info):
                tid = self._tid(trial)
                try:
                    reason = error_reason(trial.get_error())
                except Exception:  # noqa: BLE001 - the reason is best effort, the record is not
                    reason = "trial failed (no error file)"
                last_epoch = (self.epochs.get(tid) or [{}])[-1]
                self.store.record(trial.config["trial"], "error", None, error=reason,
                                  epochs=self.epochs.get(tid), extra={"epochs_run": last_epoch.get("epoch", 0)})
                self.summary.failed += 1
                self.summary.failures.append((tid, reason))
                self._progress(trial, f"FAILED: {reason}")

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

        return _CB(*a, **k)


def _fmt(s: float) -> str:
    s = int(round(s))
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"
