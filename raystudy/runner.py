"""Run a study's trials through Ray Tune; running it again continues it.

Trials are expanded and validated by `raystudy.spec` (the study's Plan) before anything
here runs; data is loaded (and a missing dataset reported) and warm starts are resolved
before Ray starts too. Running a study again continues it:

* trials are identified by a hash of their resolved config: completed ones are
  skipped, errored ones too unless `retry_failed`; a wider grid adds only new trials;
* a trial interrupted in an earlier run (Ctrl-C, a crashed driver) resumes from its
  newest checkpoint in the earlier `tune-*` experiment folders (raystudy.layout's rule);
* a changed base config (the trial-level config outside `space`) is refused with a
  diff, unless `force_new`, which moves the old results aside (raystudy.basecheck);
* finished trials made by other code (raystudy.provenance: the package's source hash)
  are reused and reported, re-run (`code_policy="rerun"`) or refused ("strict").

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
from .dashboard import dashboard_lines, job_metadata, study_trainable
from .errors import StudyError
from .faults import FAULT_ENV, faults_from_env
from .layout import PLAN, Layout
from .provenance import code_policy as _code_policy
from .provenance import code_record, run_entry, with_run
from .results import ResultStore, write_json_atomic
from .session import check_address, check_resources, init_ray, quiet_tune
from .spec.load import StudyDocument
from .spec.space import Trial


@dataclass
class RunSummary:
    out: Path
    total: int
    completed: int = 0
    failed: int = 0
    stopped: int = 0          # stopped early by tune.scheduler (recorded, never re-run)
    skipped: int = 0
    resumed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    # (trial id, failed health checks) of trials recorded unhealthy in this run.
    unhealthy: list[tuple[str, list[str]]] = field(default_factory=list)
    wall_s: float = 0.0
    dashboard_url: str | None = None
    moved_to: Path | None = None
    # This run's Ray Tune experiment folder: what ExperimentAnalysis / Tuner.restore take.
    experiment: Path | None = None
    best: str | None = None   # tune.search: the best trial so far, in words

    def skip(self, trial_id: str, row: dict) -> None:
        """Count a trial an earlier run recorded (`row`: its trials.parquet row) as skipped."""
        self.skipped += 1
        st = row.get("status")
        if st == "completed":
            self.completed += 1
        elif st == "stopped":
            self.stopped += 1
        else:
            self.failed += 1
            self.failures.append((trial_id, str(row.get("error"))))


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


def _to_run(study: StudyDocument, store: ResultStore, summary: RunSummary, retry_failed: bool,
            rerun: set[str] = frozenset()) -> list[Trial]:
    """The trials not recorded yet (or failed, with retry_failed; or in `rerun`); counts the
    rest in summary."""
    todo = []
    for t in study.trials:
        st = store.status_of(t.trial_id)
        if t.trial_id in rerun:
            todo.append(t)
        elif st in ("completed", "stopped") or (st == "error" and not retry_failed):
            summary.skip(t.trial_id, store.rows[t.trial_id])
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
                code: dict | None = None) -> list[dict]:
    """The trial dicts Ray gets: the trial (id, params, config: what the id hashes) plus what
    the driver worked out for it: where it resumes, its warm-start weights, test faults, the
    code record of this run (provenance; recorded with the trial's row)."""
    trials = []
    for t in todo:
        d = t.to_ray()
        if code:
            d["code"] = code
        if t.trial_id in resume:
            d["resume_from"] = resume[t.trial_id]
        if t.trial_id in weights:
            d["init_weights"] = weights[t.trial_id]
        if faults:
            d["faults"] = faults
        trials.append(d)
    return trials


def _tuner(study: StudyDocument, layout: Layout, name: str, trials: list[dict] | None, bundles: dict,
           callbacks: list, max_concurrent: int | None, extra: dict):
    """The Tuner: a grid over `trials`, or (trials None) the search algorithm in `extra`,
    which also carries a scheduler (raystudy.tuneopts)."""
    from ray import tune

    from .trainable import trainable
    res = study.spec.resources
    # The study's `health:` options travel beside each trial (study-level: not in its id).
    fn = tune.with_parameters(trainable, bundles=bundles, cpus=res.cpu, health=study.spec.health.model_dump())
    fn = tune.with_resources(fn, {"cpu": res.cpu, "gpu": res.gpu})
    fn = study_trainable(fn, study.name)   # actors named <study>:<trial id> on the dashboard
    return tune.Tuner(
        fn,
        param_space={"trial": tune.grid_search(trials)} if trials is not None else {},
        tune_config=tune.TuneConfig(
            max_concurrent_trials=max_concurrent or study.spec.tune.max_concurrent,
            trial_name_creator=lambda tr: tr.config["trial"]["trial_id"],
            trial_dirname_creator=lambda tr: tr.config["trial"]["trial_id"],
            reuse_actors=study.spec.tune.reuse_workers,
            **extra,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=str(layout.out.resolve()),
            callbacks=callbacks,
            failure_config=tune.FailureConfig(max_failures=study.spec.tune.retries),
            # One: the newest. The final report's checkpoint holds the weights (model.pt) and
            # the last training state, so Ray's get_best_checkpoint(trial, "accuracy") finds
            # the final metrics beside it; before that, the last epoch's state.pt.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            verbose=0,
        ),
    )


def _search_run(study: StudyDocument, layout: Layout, store: ResultStore, summary: RunSummary, retry_failed: bool):
    """With `tune.search`: what earlier runs of the search recorded (counted in `summary`) and
    the budget left (raystudy.search.SearchRun); None for a study that expands its space."""
    if study.spec.tune.search is None:
        return None
    from .search import SearchRun
    search = SearchRun(study, layout, store.rows, retry_failed)
    search.count(summary)
    return search


def _record_plan(study: StudyDocument, layout: Layout, search, entry: dict | None = None) -> None:
    """study.json; a search lists the trials it has proposed so far instead of the expansion.
    `entry` (provenance.run_entry) is appended to the earlier runs' entries; None keeps them."""
    record = plan_record(study)
    if search is not None:
        record["trials"] = [t.to_ray() for t in search.trials()]
        record["search"] = study.spec.tune.search.model_dump(mode="json")
    previous = _previous_plan(layout)
    if entry is not None:
        record = with_run(record, previous, entry)
    else:
        record["runs"] = list((previous or {}).get("runs") or [])
    write_json_atomic(record, layout / PLAN)


def _after_steps(study: StudyDocument, out: Path, verbose: bool) -> None:
    """Study-level steps (e.g. transfer attacks) once every trial has finished."""
    if not study.spec.after:
        return
    from .poststeps import run_after_steps
    written = run_after_steps(study, out)
    if verbose:
        for name, path in (written or {}).items():
            _say(f"raystudy: after-step '{name}' wrote {path}")


def _searcher(search, layout: Layout, weights: dict[str, str], faults: list[dict], code: dict | None = None):
    """The search's Tune searcher; each trial it proposes goes to Ray as _ray_trials makes it
    (resuming where an earlier run cut it off; the base's warm-start weights, shared by all)."""
    warm = next(iter(weights.values()), None)

    def prepare(t: Trial) -> dict:
        return _ray_trials([t], layout.resume_points([t.trial_id]), {t.trial_id: warm} if warm else {}, faults, code)[0]

    return search.make_searcher(prepare)


def _claims(study: StudyDocument, out: Path, verbose: bool) -> None:
    """The study's claims recomputed from its tables into claims.parquet, verdicts printed. A
    problem here never fails the run: `raystudy claims DIR` recomputes them."""
    if not study.spec.claims:
        return
    try:
        from analysis.claim_views import text_table
        from analysis.claims import write_claims
    except ImportError:  # analysis is optional for running studies
        return
    try:
        df = write_claims(out)
    except StudyError as e:
        if verbose:
            _say(f"raystudy: claims not evaluated ({e.render()}); `raystudy claims {out}` retries")
        return
    if verbose and df is not None:
        _say("raystudy: claims (claims.parquet):\n" + text_table(df))


def _fit(study: StudyDocument, layout: Layout, todo: list[Trial], store: ResultStore, summary: RunSummary, *,
         resume: dict[str, str], results: Path, address: str | None, dashboard: bool,
         max_concurrent: int | None, verbose: bool, code: dict | None = None, search=None) -> None:
    """Start Ray and run `todo` (or, with `search`, what the searcher proposes); StudyInterrupted
    when Tune stopped before all were recorded."""
    worker_faults, driver_faults = faults_from_env()
    check_address(address)
    sources = todo or study.trials[:1]   # a search's trials share the base's data and warm start
    weights = _warm_starts(study, sources, results.resolve())
    bundles = _load_data(study, sources)
    summary.dashboard_url = init_ray(address, dashboard, job=job_metadata(study.name, layout.out, code))
    for line in dashboard_lines(summary.dashboard_url, study.name) if verbose else []:
        _say(f"raystudy: {line}")
    check_resources(study.spec.resources, study.file)
    from .progress import StudyCallback
    from .tuneopts import callbacks, relaxed_metric_check, tune_config_extras
    n = search.remaining if search is not None else len(todo)
    cb = StudyCallback(store, summary, n, verbose, driver_faults)
    searcher = _searcher(search, layout, weights, worker_faults, code) if search is not None else None
    trials = None if search is not None else _ray_trials(todo, resume, weights, worker_faults, code)
    name = layout.new_experiment_name()
    summary.experiment = layout.out / name
    tuner = _tuner(study, layout, name, trials, bundles, [cb, *callbacks(study, layout.out)], max_concurrent,
                   tune_config_extras(study, searcher, n))
    with quiet_tune(), relaxed_metric_check(search is not None or study.spec.tune.scheduler is not None):
        tuner.fit()
    if search is not None and searcher.metric_error() is not None:
        raise searcher.metric_error()
    if cb.recorded < (search.expected() if search is not None else len(todo)):
        # Tune stops gracefully on the first Ctrl-C and returns; unfinished trials mean that.
        raise StudyInterrupted(summary)


def _code_check(study: StudyDocument, store: ResultStore, code: dict, policy: str) -> set[str]:
    """Finished trials made by other code: the ids to run again; says what it does (loudly)."""
    rerun, msg = _code_policy(store.rows, [t.trial_id for t in study.trials], code, policy, study.file)
    if msg:
        _say(f"raystudy: WARNING: {msg}")
    return rerun


def _previous_plan(layout: Layout) -> dict | None:
    try:
        return layout.read_plan()
    except StudyError:
        return None  # unreadable: this run writes it anew (its earlier runs are lost)


def run_study(study: StudyDocument, results: str | Path = "results", *, address: str | None = None,
              max_concurrent: int | None = None, dashboard: bool = True, retry_failed: bool = False,
              force_new: bool = False, verbose: bool = True, code_policy: str = "reuse",
              code: dict | None = None) -> RunSummary:
    """Run (or continue) a study; `code` is this run's provenance.code_record (computed
    from the installed package when None), `code_policy` one of provenance.POLICIES."""
    t0 = time.perf_counter()
    layout = Layout(Path(results) / study.name)
    moved = _open_folder(study, layout, force_new, verbose)
    store = ResultStore(layout.out, health=study.spec.health)
    code = code or code_record()
    rerun = _code_check(study, store, code, code_policy)
    summary = RunSummary(out=layout.out, total=len(study.trials), moved_to=moved)
    search = _search_run(study, layout, store, summary, retry_failed)
    todo = _to_run(study, store, summary, retry_failed, rerun) if search is None else []
    _record_plan(study, layout, search, run_entry(code, len(study.trials), len(todo)))
    worker_faults, driver_faults = faults_from_env()
    if verbose and (worker_faults or driver_faults):
        _say(f"raystudy: {FAULT_ENV} is set: injecting test faults ({os.environ[FAULT_ENV]}); "
             "unset it for real studies")
    # A trial run again for changed code starts afresh, not from the old code's checkpoint.
    pending = todo if search is None else search.pending
    resume = layout.resume_points(t.trial_id for t in pending if t.trial_id not in rerun)
    summary.resumed = len(resume)
    if verbose and search is not None:
        _say(f"raystudy: study '{study.name}': {search.describe()}, {search.remaining} to propose; "
             f"results in {layout.out}")
    elif verbose:
        _say(f"raystudy: study '{study.name}': {len(study.trials)} trials, {len(todo)} to run"
             + (f", {summary.skipped} already recorded" if summary.skipped else "")
             + (f", {summary.resumed} resuming from checkpoints" if summary.resumed else "")
             + f"; results in {layout.out}")
    if todo or (search is not None and search.remaining):
        try:
            _fit(study, layout, todo, store, summary, resume=resume, results=Path(results), address=address,
                 dashboard=dashboard, max_concurrent=max_concurrent, verbose=verbose, code=code,
                 search=search)
        finally:
            summary.wall_s = time.perf_counter() - t0
            if search is not None:
                _record_plan(study, layout, search)
                summary.best = search.best_text()
    _after_steps(study, layout.out, verbose)
    _claims(study, layout.out, verbose)
    summary.wall_s = time.perf_counter() - t0
    return summary
