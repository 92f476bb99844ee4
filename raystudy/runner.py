"""Run a study's trials through Ray Tune; running it again continues it.

Trials are expanded and validated by `raystudy.spec` (the study's Plan) before anything
here runs; data is loaded (and a missing dataset reported) and warm starts are resolved
before Ray starts too. Running a study again continues it:

* trials are identified by a hash of their resolved config: completed ones are
  skipped, errored ones too unless `retry_failed`; a wider grid adds only new trials;
* a trial interrupted in an earlier run (Ctrl-C, a crashed driver) resumes from its
  newest checkpoint in the earlier `tune-*` experiment folders (raystudy.layout's rule);
* a changed base config (the trial-level config outside `space`) is refused with a
  diff, unless `force_new`, which moves the old results aside (raystudy.basecheck).

The seams: session.py (Ray), progress.py (the Tune callback that records trials),
layout.py (the results folder), basecheck.py (study.json and the base check), faults.py
(test-only fault injection). Ray is imported only once a run has trials to start.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from .basecheck import check_base, plan_record
from .errors import StudyError
from .faults import FAULT_ENV, faults_from_env
from .layout import PLAN, Layout
from .results import ResultStore, write_json_atomic
from .session import check_resources, init_ray, quiet_tune
from .spec.load import StudyDocument
from .spec.space import Trial


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


def _open_folder(study: StudyDocument, layout: Layout, force_new: bool, verbose: bool) -> Path | None:
    """A writable results folder whose recorded base matches the study's (see basecheck)."""
    layout.ensure_writable()
    moved = check_base(study, layout.out, force_new)
    if moved is not None:
        layout.ensure_writable()
        if verbose:
            _say(f"raystudy: --force-new: earlier results moved to {moved}")
    return moved


def _to_run(study: StudyDocument, store: ResultStore, summary: RunSummary, retry_failed: bool) -> list[Trial]:
    """The trials not recorded yet (or failed, with retry_failed); counts the rest in summary."""
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
    return todo


def _warm_starts(study: StudyDocument, todo: list[Trial], root: Path) -> dict[str, str]:
    """Every `train.init_from` resolved once, before Ray starts, to the source's model.pt: a
    typo in `match`, or a source study that has not run, is one clear error now instead of N
    failed trials later; the worker gets the file's path with its trial."""
    from .warmstart import resolve
    weights = {}
    for t in todo:
        init = study.plan.parsed[t.trial_id].init_from
        if init is not None:
            try:
                weights[t.trial_id] = str(resolve(init, root))
            except StudyError as e:
                raise e.located(file=study.file) from None
    return weights


def _load_data(study: StudyDocument, todo: list[Trial]) -> dict:
    """Each distinct dataset once, in the driver, before Ray starts: a missing dataset is a
    clear error in seconds instead of N failed trials."""
    from .data import load
    from .trainable import data_key
    bundles = {}
    for t in todo:
        key = data_key(t.config.get("data", {}))
        if key not in bundles:
            try:
                bundles[key] = load(study.plan.parsed[t.trial_id].cfg.data)
            except StudyError as e:
                raise e.located(file=study.file) from None
    return bundles


def _ray_trials(todo: list[Trial], resume: dict, weights: dict, faults: list[dict],
                health: dict | None = None) -> list[dict]:
    """The trial dicts Ray gets: the trial (id, params, config: what the id hashes) plus what
    the driver worked out for it: where it resumes, its warm-start weights, test faults, and
    the study's `health:` options (study-level, so outside the config and the id)."""
    trials = []
    for t in todo:
        d = t.to_ray()
        if health is not None:
            d["health"] = health
        if t.trial_id in resume:
            d["resume_from"] = resume[t.trial_id]
        if t.trial_id in weights:
            d["init_weights"] = weights[t.trial_id]
        if faults:
            d["faults"] = faults
        trials.append(d)
    return trials


def _tuner(study: StudyDocument, layout: Layout, trials: list[dict], bundles: dict, callback,
           max_concurrent: int | None):
    from ray import tune

    from .trainable import trainable
    res = study.spec.resources
    fn = tune.with_parameters(trainable, bundles=bundles, cpus=res.cpu)
    fn = tune.with_resources(fn, {"cpu": res.cpu, "gpu": res.gpu})
    return tune.Tuner(
        fn,
        param_space={"trial": tune.grid_search(trials)},
        tune_config=tune.TuneConfig(
            max_concurrent_trials=max_concurrent or study.spec.tune.max_concurrent,
            trial_name_creator=lambda tr: tr.config["trial"]["trial_id"],
            trial_dirname_creator=lambda tr: tr.config["trial"]["trial_id"],
            reuse_actors=False,
        ),
        run_config=tune.RunConfig(
            name=layout.new_experiment_name(),
            storage_path=str(layout.out.resolve()),
            callbacks=[callback],
            failure_config=tune.FailureConfig(max_failures=study.spec.tune.retries),
            # The newest two: the final model.pt one and the last full training state.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            verbose=0,
        ),
    )


def _after_steps(study: StudyDocument, out: Path, verbose: bool) -> None:
    """Study-level steps (e.g. transfer attacks) once every trial has finished."""
    if not study.spec.after:
        return
    from .poststeps import run_after_steps
    written = run_after_steps(study, out)
    if verbose:
        for name, path in (written or {}).items():
            _say(f"raystudy: after-step '{name}' wrote {path}")


def _fit(study: StudyDocument, layout: Layout, todo: list[Trial], store: ResultStore, summary: RunSummary, *,
         resume: dict[str, str], results: Path, address: str | None, dashboard: bool,
         max_concurrent: int | None, verbose: bool) -> None:
    """Start Ray and run `todo`; StudyInterrupted when Tune stopped before all were recorded."""
    worker_faults, driver_faults = faults_from_env()
    weights = _warm_starts(study, todo, results.resolve())
    bundles = _load_data(study, todo)
    summary.dashboard_url = init_ray(address, dashboard)
    if verbose and summary.dashboard_url:
        _say(f"raystudy: Ray dashboard at {summary.dashboard_url}")
    check_resources(study.spec.resources, study.file)
    from .progress import StudyCallback
    cb = StudyCallback(store, summary, len(todo), verbose, driver_faults)
    trials = _ray_trials(todo, resume, weights, worker_faults, study.spec.health.model_dump())
    tuner = _tuner(study, layout, trials, bundles, cb, max_concurrent)
    with quiet_tune():
        tuner.fit()
    if cb.recorded < len(todo):
        # Tune stops gracefully on the first Ctrl-C and returns; unfinished trials mean that.
        raise StudyInterrupted(summary)


def run_study(study: StudyDocument, results: str | Path = "results", *, address: str | None = None,
              max_concurrent: int | None = None, dashboard: bool = True, retry_failed: bool = False,
              force_new: bool = False, verbose: bool = True) -> RunSummary:
    t0 = time.perf_counter()
    layout = Layout(Path(results) / study.name)
    moved = _open_folder(study, layout, force_new, verbose)
    store = ResultStore(layout.out, health=study.spec.health)
    write_json_atomic(plan_record(study), layout / PLAN)
    summary = RunSummary(out=layout.out, total=len(study.trials), moved_to=moved)
    todo = _to_run(study, store, summary, retry_failed)
    worker_faults, driver_faults = faults_from_env()
    if verbose and (worker_faults or driver_faults):
        _say(f"raystudy: {FAULT_ENV} is set: injecting test faults ({os.environ[FAULT_ENV]}); "
             "unset it for real studies")
    resume = layout.resume_points(t.trial_id for t in todo)
    summary.resumed = len(resume)
    if verbose:
        _say(f"raystudy: study '{study.name}': {len(study.trials)} trials, {len(todo)} to run"
             + (f", {summary.skipped} already recorded" if summary.skipped else "")
             + (f", {summary.resumed} resuming from checkpoints" if summary.resumed else "")
             + f"; results in {layout.out}")
    if todo:
        try:
            _fit(study, layout, todo, store, summary, resume=resume, results=Path(results), address=address,
                 dashboard=dashboard, max_concurrent=max_concurrent, verbose=verbose)
        finally:
            summary.wall_s = time.perf_counter() - t0
    _after_steps(study, layout.out, verbose)
    summary.wall_s = time.perf_counter() - t0
    return summary
