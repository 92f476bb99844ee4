"""Build and run the Ray Tune experiment of a study; resume by trial id.

Ray lives here and in trainable.py only. Trials are expanded and validated by
`raystudy.spec` before Ray starts; data is loaded (and a missing dataset reported)
before Ray starts too. Running a study again continues it:

* trials are identified by a hash of their resolved config: completed ones are
  skipped, errored ones too unless `retry_failed`; a wider grid adds only new trials;
* a trial interrupted in an earlier run (Ctrl-C, a crashed driver) resumes from its
  newest checkpoint in the earlier `tune-*` experiment folders;
* a changed base config (the trial-level config outside `space`) is refused with a
  diff, unless `force_new`, which moves the old results aside (never deletes them).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import StudyError
from .results import PLAN, TRIALS, ResultStore, error_reason, write_json_atomic
from .spec.load import StudyDocument
from .spec.paths import flatten, set_path

STATE_FILE = "state.pt"   # = trainable.STATE_FILE; not imported so this module loads without Ray
MODEL_FILE = "model.pt"
FAULT_ENV = "RAYSTUDY_FAULT"
DRIVER_FAULTS = ("driver-sigint", "driver-sigkill")


@dataclass
class RunSummary:
    out: Path
    total: int
    completed: int = 0
    failed: int = 0
    skipped: int = 0
    resumed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    wall_s: float = 0.0
    dashboard_url: str | None = None
    moved_to: Path | None = None


class StudyInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGINT) during a run: finished trials are saved; the same command resumes."""

    def __init__(self, summary: RunSummary):
        super().__init__("interrupted")
        self.summary = summary


def _say(msg: str) -> None:
    print(msg, flush=True)


# ------------------------------------------------------------------------- Ray

def _probe_address(address: str) -> None:
    """Fail in seconds on an unreachable cluster (ray.init would retry for minutes, then exit)."""
    if address == "auto" or address.startswith("local"):
        return
    target = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        raise StudyError(f"'{address}' is not a Ray address", path="--address",
                         expected="HOST:PORT, ray://HOST:PORT or auto")
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=5):
            pass
    except OSError as e:
        raise StudyError(f"cannot reach the Ray cluster at '{address}' ({e.strerror or e})", path="--address",
                         hint="start it with `ray start --head` or check the address") from None


def init_ray(address: str | None = None, dashboard: bool = True, num_cpus: int | None = None,
             num_gpus: int | None = None) -> str | None:
    """Connect to a cluster (`address`) or start a local Ray; returns the dashboard URL."""
    if address:
        _probe_address(address)
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
    except (ConnectionError, TimeoutError, ValueError, RuntimeError, SystemExit) as e:
        if address:
            first = (str(e).splitlines() or [type(e).__name__])[0]
            raise StudyError(f"cannot reach the Ray cluster at '{address}': {first}",
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


class _DropTrialTraces(logging.Filter):
    """A failed trial is one line of ours (reason + path of its error.txt), not Tune's
    full traceback; every other warning and error still reaches the console."""

    PREFIXES = ("Trial task failed for trial", "Trials did not complete")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.PREFIXES)


@contextlib.contextmanager
def _quiet_tune():
    """Tune's own console output (configuration box, result tables) off; our lines stay.

    With the legacy reporter and verbose=0 Tune prints nothing of its own.
    """
    old = os.environ.get("RAY_AIR_NEW_OUTPUT")
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    flt = _DropTrialTraces()
    loggers = [logging.getLogger(n) for n in ("ray.tune.execution.tune_controller", "ray.tune.tune")]
    for lg in loggers:
        lg.addFilter(flt)
    try:
        yield
    finally:
        for lg in loggers:
            lg.removeFilter(flt)
        if old is None:
            os.environ.pop("RAY_AIR_NEW_OUTPUT", None)
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = old


# ------------------------------------------------------------------ results folder

def _writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise StudyError(f"results folder '{out}' is not writable ({e.strerror or e})", path="--results",
                         hint="choose another folder with --results DIR") from None


def varied_paths(study: StudyDocument) -> set[str]:
    """Config paths the space varies (grid/choice/.../expr, and each path of a zip)."""
    from .spec.space import ONLY, OPERATORS, _operator
    out: set[str] = set()
    for key, entry in (study.spec.space or {}).items():
        op, arg = _operator(str(key), entry, study.file)
        if op == "zip" and isinstance(arg, dict):
            out.update(str(p) for p in arg if p != ONLY)
        elif op in OPERATORS:
            out.add(str(key))
    return out


def base_fingerprint(study: StudyDocument) -> dict[str, Any]:
    """The study's base as flat {path: value}: the trial-level config with the space's
    constants applied and its varied paths left out (those belong to single trials)."""
    base = study.base_config()
    varied = varied_paths(study)
    consts: dict[str, Any] = {}
    for key, entry in (study.spec.space or {}).items():
        key = str(key)
        if key in varied:
            continue
        if isinstance(entry, dict) and "zip" in entry:
            continue
        if key.split(".")[0] in base:
            try:
                set_path(base, key, entry)
            except (KeyError, IndexError, TypeError, ValueError):
                consts[f"space.{key}"] = entry
        else:
            consts[f"space.{key}"] = entry
    flat = {k: v for k, v in flatten(base).items()
            if not any(k == p or k.startswith(p + ".") for p in varied)}
    flat.update(consts)
    return json.loads(json.dumps(flat, default=str))


def _hash(flat: dict) -> str:
    return hashlib.sha1(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _diff(old: dict, new: dict, limit: int = 20) -> list[str]:
    lines = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k, "(absent)"), new.get(k, "(absent)")
        if a != b:
            lines.append(f"  {k}: {json.dumps(a, default=str)} -> {json.dumps(b, default=str)}")
    if len(lines) > limit:
        lines = lines[:limit] + [f"  ... and {len(lines) - limit} more"]
    return lines


def _changed_keys(old: dict, new: dict) -> list[str]:
    return [k for k in sorted(set(old) | set(new)) if old.get(k, "(absent)") != new.get(k, "(absent)")]


def _move_aside(out: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest = out.with_name(f"{out.name}.old-{stamp}")
    i = 2
    while dest.exists():
        dest = out.with_name(f"{out.name}.old-{stamp}-{i}")
        i += 1
    out.rename(dest)
    return dest


def _varied_in(trials: list[dict]) -> set[str]:
    """For a plan recorded before `varied` was: the params that take more than one value
    (params also hold constants whose value is a mapping, which are not an axis)."""
    seen: dict[str, set[str]] = {}
    for t in trials:
        for k, v in (t.get("params") or {}).items():
            seen.setdefault(k, set()).add(json.dumps(v, sort_keys=True, default=str))
    return {k for k, vals in seen.items() if len(vals) > 1}


def _covered(key: str, varied: set[str]) -> bool:
    key = key[len("space."):] if key.startswith("space.") else key
    return any(key == v or key.startswith(v + ".") for v in varied)


def check_base(study: StudyDocument, out: Path, force_new: bool) -> Path | None:
    """Refuse to mix results of a changed base config; with force_new move the old ones aside."""
    has_results = (out / TRIALS).exists() or any(out.glob("tune-*")) or (out / PLAN).exists()
    if force_new:
        return _move_aside(out) if out.exists() and has_results else None
    if not (out / TRIALS).exists() or not (out / PLAN).exists():
        return None
    try:
        old_plan = json.loads((out / PLAN).read_text())
    except (OSError, ValueError):
        return None
    old = old_plan.get("base_fingerprint")
    if old is None:
        return None  # recorded by an older raystudy: nothing to compare
    new = base_fingerprint(study)
    if _hash(old) == _hash(new):
        return None
    old_varied = set(old_plan.get("varied") or _varied_in(old_plan.get("trials", [])))
    new_varied = varied_paths(study)
    # A path that one run varied and the other holds fixed (`--set train.augment.rotation=90`
    # pins an axis; dropping the pin widens it again) selects other trials of the same study:
    # their ids decide what is reused, so it is not a change of the base.
    changed = [k for k in _changed_keys(old, new)
               if not ((k not in old and _covered(k, old_varied)) or (k not in new and _covered(k, new_varied)))]
    if not changed:
        return None
    old = {k: v for k, v in old.items() if k in changed}
    new = {k: v for k, v in new.items() if k in changed}
    raise StudyError(
        f"the study's base config changed since the results in {out} were recorded:\n"
        + "\n".join(_diff(old, new)) + "\n",
        file=study.file, path=changed[0] if changed else None,
        hint="revert the change, use another --results folder, or run with --force-new to start "
             "afresh (the old results are moved to " + f"{out.name}.old-<time>, not deleted)")


def plan_record(study: StudyDocument) -> dict:
    fp = base_fingerprint(study)
    return {
        "name": study.name,
        "file": study.file,
        "description": study.spec.description,
        "base": study.base_config(),
        "base_fingerprint": fp,
        "base_hash": _hash(fp),
        "varied": sorted(varied_paths(study)),
        "report": study.spec.report,
        "trials": [t.to_ray() for t in study.trials],
    }


# ----------------------------------------------------------------- checkpoints

def _ckpt_index(p: Path) -> int:
    try:
        return int(p.name.rsplit("_", 1)[-1])
    except ValueError:
        return -1


def _experiments(out: Path) -> list[Path]:
    """tune-* folders, newest first (their names sort by start time)."""
    return sorted((p for p in out.glob("tune-*") if p.is_dir()), key=lambda p: p.name, reverse=True)


def latest_checkpoints(out: Path, trial_ids: set[str], marker: str = STATE_FILE) -> dict[str, str]:
    """Newest checkpoint folder holding `marker` per trial id, over every earlier experiment."""
    found: dict[str, str] = {}
    for exp in _experiments(out):
        for tid in trial_ids - set(found):
            tdir = exp / tid
            if not tdir.is_dir():
                continue
            for c in sorted(tdir.glob("checkpoint_*"), key=_ckpt_index, reverse=True):
                if (c / marker).is_file():
                    found[tid] = str(c.resolve())
                    break
    return found


def _final_checkpoint(trial) -> str | None:
    ck = getattr(trial, "checkpoint", None)
    path = getattr(ck, "path", None)
    if path and (Path(path) / MODEL_FILE).is_file():
        return str(Path(path).resolve())
    tdir = Path(trial.path) if getattr(trial, "path", None) else None
    if tdir and tdir.is_dir():
        for c in sorted(tdir.glob("checkpoint_*"), key=_ckpt_index, reverse=True):
            if (c / MODEL_FILE).is_file():
                return str(c.resolve())
    return None


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


def _unique_experiment_name(out: Path) -> str:
    name = f"tune-{time.strftime('%Y%m%d-%H%M%S')}"
    i = 2
    while (out / name).exists():
        name = f"tune-{time.strftime('%Y%m%d-%H%M%S')}-{i}"
        i += 1
    return name


# ------------------------------------------------------------------------ run

def _faults() -> tuple[list[dict], list[dict]]:
    """(worker faults, driver faults) from RAYSTUDY_FAULT: test-only, see trainable.parse_faults."""
    from .trainable import parse_faults
    text = os.environ.get(FAULT_ENV)
    if not text:
        return [], []
    try:
        faults = parse_faults(text)
    except ValueError as e:
        raise StudyError(str(e), path=FAULT_ENV) from None
    return ([f for f in faults if f["kind"] not in DRIVER_FAULTS],
            [f for f in faults if f["kind"] in DRIVER_FAULTS])


def _load_data(study: StudyDocument, todo: list) -> dict:
    """Each distinct dataset once, in the driver, before Ray starts: a missing dataset is a
    clear error in seconds instead of N failed trials."""
    from .data import load
    from .spec.schema import DataSpec
    from .trainable import data_key
    bundles = {}
    for t in todo:
        key = data_key(t.config.get("data", {}))
        if key not in bundles:
            try:
                bundles[key] = load(DataSpec.model_validate(t.config.get("data", {})))
            except StudyError as e:
                raise e.located(file=study.file) from None
    return bundles


def run_study(study: StudyDocument, results: str | Path = "results", *, address: str | None = None,
              max_concurrent: int | None = None, dashboard: bool = True, retry_failed: bool = False,
              force_new: bool = False, verbose: bool = True) -> RunSummary:
    t0 = time.perf_counter()
    out = Path(results) / study.name
    _writable(out)
    moved = check_base(study, out, force_new)
    if moved is not None:
        _writable(out)
        if verbose:
            _say(f"raystudy: --force-new: earlier results moved to {moved}")
    store = ResultStore(out)
    write_json_atomic(plan_record(study), out / PLAN)
    summary = RunSummary(out=out, total=len(study.trials), moved_to=moved)
    todo = []
    for t in study.trials:
        st = store.status_of(t.trial_id)
        if st == "completed" or (st == "error" and not retry_failed):
            summary.skipped += 1
            if st == "completed":
                summary.completed += 1
            else:
                summary.failed += 1
                summary.failures.append((t.trial_id, str(store.rows[t.trial_id].get("error"))))
        else:
            todo.append(t)
    worker_faults, driver_faults = _faults()
    if verbose and (worker_faults or driver_faults):
        _say(f"raystudy: {FAULT_ENV} is set: injecting test faults ({os.environ[FAULT_ENV]}); "
             "unset it for real studies")
    resume = latest_checkpoints(out, {t.trial_id for t in todo})
    summary.resumed = len(resume)
    if verbose:
        _say(f"raystudy: study '{study.name}': {len(study.trials)} trials, {len(todo)} to run"
             + (f", {summary.skipped} already recorded" if summary.skipped else "")
             + (f", {len(resume)} resuming from checkpoints" if resume else "")
             + f"; results in {out}")
    if not todo:
        _after_steps(study, out, verbose)
        summary.wall_s = time.perf_counter() - t0
        return summary

    root = str(Path(results).resolve())
    _check_warm_starts(todo, root)
    bundles = _load_data(study, todo)
    from ray import tune

    from .trainable import trainable

    summary.dashboard_url = init_ray(address, dashboard)
    if verbose and summary.dashboard_url:
        _say(f"raystudy: Ray dashboard at {summary.dashboard_url}")
    _check_resources(study)
    res = study.spec.resources
    fn = tune.with_parameters(trainable, bundles=bundles, cpus=res.cpu)
    fn = tune.with_resources(fn, {"cpu": res.cpu, "gpu": res.gpu})
    cb = StudyCallback(store, summary, len(todo), verbose, driver_faults)
    trials = []
    for t in todo:
        d = t.to_ray()
        if t.trial_id in resume:
            d["resume_from"] = resume[t.trial_id]
        if worker_faults:
            d["faults"] = worker_faults
        # Where `init_from: {study: NAME}` looks, in the worker too (on any node).
        d["results_root"] = root
        trials.append(d)
    tuner = tune.Tuner(
        fn,
        param_space={"trial": tune.grid_search(trials)},
        tune_config=tune.TuneConfig(
            max_concurrent_trials=max_concurrent or study.spec.tune.max_concurrent,
            trial_name_creator=lambda tr: tr.config["trial"]["trial_id"],
            trial_dirname_creator=lambda tr: tr.config["trial"]["trial_id"],
            reuse_actors=False,
        ),
        run_config=tune.RunConfig(
            name=_unique_experiment_name(out),
            storage_path=str(out.resolve()),
            callbacks=[cb],
            failure_config=tune.FailureConfig(max_failures=study.spec.tune.retries),
            # The newest two: the final model.pt one and the last full training state.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            verbose=0,
        ),
    )
    with _quiet_tune():
        tuner.fit()
    summary.wall_s = time.perf_counter() - t0
    if cb.recorded < len(todo):
        # Tune stops gracefully on the first Ctrl-C and returns; unfinished trials mean that.
        raise StudyInterrupted(summary)
    _after_steps(study, out, verbose)
    summary.wall_s = time.perf_counter() - t0
    return summary


def _check_warm_starts(todo: list, root: str) -> None:
    """Resolve every `train.init_from` before Ray starts: a typo in `match`, or a source
    study that has not run, is one clear error now instead of N failed trials later."""
    from .warmstart import checkpoint_file, find_trial, parse
    before = os.environ.get("RAYSTUDY_RESULTS")
    # `init_from: {study: NAME}` looks under the results root of this run; set it only for
    # the lookup so the driver process is left as it was.
    os.environ["RAYSTUDY_RESULTS"] = root
    try:
        for t in todo:
            init = (t.config.get("train") or {}).get("init_from")
            if init:
                spec = parse(init)
                tid, src = find_trial(spec)
                checkpoint_file(tid, src)
    finally:
        if before is None:
            os.environ.pop("RAYSTUDY_RESULTS", None)
        else:
            os.environ["RAYSTUDY_RESULTS"] = before


def _after_steps(study: StudyDocument, out: Path, verbose: bool) -> None:
    """Study-level steps (e.g. transfer attacks) once every trial has finished."""
    if not study.spec.after:
        return
    from .poststeps import run_after_steps
    written = run_after_steps(study, out)
    if verbose:
        for name, path in (written or {}).items():
            _say(f"raystudy: after-step '{name}' wrote {path}")


class StudyCallback:
    """Records trials in the tables as they finish and prints progress."""

    def __new__(cls, *a, **k):
        # Subclass tune.Callback lazily so importing this module needs no Ray.
        from ray import tune

        class _CB(tune.Callback):
            def __init__(self, store: ResultStore, summary: RunSummary, n: int, verbose: bool,
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
                self.store.record(trial.config["trial"], "completed", last or None,
                                  epochs=self._seen_epochs(tid), checkpoint=_final_checkpoint(trial),
                                  extra={"epoch_reports": len(self.epochs.get(tid, []))})
                self.recorded += 1
                self.completed_here += 1
                self.summary.completed += 1
                rf = last.get("resumed_from_epoch") or 0
                self._progress(trial, "done" + (f" (resumed from epoch {rf})" if rf else ""))

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
                where = f"; full trace in {Path(trial.path) / 'error.txt'}" if trace and trial.path else ""
                self._progress(trial, f"FAILED: {reason}{where}")

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

        return _CB(*a, **k)


def _fmt(s: float) -> str:
    s = int(round(s))
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"
