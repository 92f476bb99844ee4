"""`tune.search`: Optuna, through Ray Tune's OptunaSearch, proposes the trials of a study.

A proposal is a value for each searched space entry; it becomes a full trial config the way
the expansion makes one (raystudy.spec.space.trial_from_values), so its trial id is the usual
hash of that config. That keeps raystudy's identity and resume:

* a proposal whose trial is already recorded (completed, stopped or failed) is not run: its
  stored outcome is told to the searcher, which asks again;
* every recorded trial this search could have proposed (same space, same base) is told to the
  searcher before it proposes anything, and counts against `num_samples`: a re-run continues
  a stopped search instead of starting over, and a larger `num_samples` adds only new trials;
* a trial cut off in an earlier run (its folder exists, its row does not) is proposed first,
  so it resumes from its checkpoint.

The searcher sees only final results (Optuna's pruning is not used; `tune.scheduler` stops
trials instead): a stopped trial is a pruned Optuna trial, a failed or diverged one a failed
one.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable

from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from .errors import StudyError, suggest
from .layout import PARAMS_FILE, Layout
from .spec.paths import canonical
from .spec.space import Trial, trial_from_values
from .spec.tuning import make_sampler, searched_entries
from .spec.validate import validate_trial

# Optuna announces every in-memory study it creates; raystudy prints its own progress.
optuna_logging = __import__("optuna").logging
optuna_logging.set_verbosity(optuna_logging.WARNING)

# A searcher that keeps proposing trials already run has exhausted the space (or converged).
MAX_REPEATS = 100
DONE = ("completed", "stopped", "error")


def _primitive(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))


class Codec:
    """Space entries <-> Tune domains. Optuna's categories must be primitives, so a choice
    among mappings or lists (e.g. whole `train.method` blocks) is offered as their canonical
    JSON text and decoded back."""

    def __init__(self, entries: dict[str, tuple[str, Any]]):
        self.entries = entries

    def domains(self) -> dict:
        from ray import tune
        out = {}
        for key, (op, arg) in self.entries.items():
            if op in ("grid", "choice"):
                out[key] = tune.choice([v if _primitive(v) else canonical(v) for v in arg])
            elif op == "uniform":
                out[key] = tune.uniform(*arg)
            elif op == "loguniform":
                out[key] = tune.loguniform(*arg)
            else:
                out[key] = tune.randint(int(arg[0]), int(arg[1]))
        return out

    def encode(self, values: dict[str, Any]) -> dict[str, Any]:
        return {k: v if _primitive(v) else canonical(v) for k, v in values.items() if k in self.entries}

    def decode(self, proposal: dict[str, Any]) -> dict[str, Any] | None:
        """A proposal (or a table row) as space values; None if it lies outside the space."""
        out = {}
        for key, (op, arg) in self.entries.items():
            v = proposal.get(key)
            if v is None or (isinstance(v, float) and math.isnan(v)):
                return None
            if op in ("grid", "choice"):
                # Optuna hands back the canonical text of a mapping, the results table its JSON.
                match = [c for c in arg if c == v or (not _primitive(c) and isinstance(v, str)
                                                      and (canonical(c) == v or _loads(v) == c))]
                if not match:
                    return None
                out[key] = match[0]
            elif op == "randint":
                if not float(v).is_integer() or not arg[0] <= v < arg[1]:
                    return None
                out[key] = int(v)
            else:
                if not arg[0] <= float(v) <= arg[1]:
                    return None
                out[key] = float(v)
        return out


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass
class Outcome:
    """What the searcher is told about one trial."""

    values: list[float] | None = None   # one per metric, when it completed with all of them
    error: bool = False
    missing: list[str] = field(default_factory=list)   # metrics a completed trial did not report
    reported: list[str] = field(default_factory=list)


def outcome(metrics: list[str], status: str, result: dict | None) -> Outcome:
    result = result or {}
    if status == "error" or result.get("_failed"):
        return Outcome(error=True)
    vals = [result.get(m) for m in metrics]
    if all(_finite(v) for v in vals):
        return Outcome(values=[float(v) for v in vals])
    if status == "completed":
        missing = [m for m, v in zip(metrics, vals) if v is None]
        if not missing:
            return Outcome(error=True)   # a metric came out NaN: a failed evaluation
        reported = sorted(k for k, v in result.items() if _finite(v) and not k.startswith("time."))
        return Outcome(missing=missing, reported=reported)
    return Outcome()   # stopped early: a pruned trial


class StudySearcher(Searcher):
    """The Tune Searcher of a study: proposals from OptunaSearch, turned into raystudy trials.

    `prepare(trial) -> dict` is the runner's: the trial dict Ray gets (plus where it resumes,
    warm-start weights). `rows` are the results table's rows by trial id (ResultStore.rows)."""

    def __init__(self, study, rows: dict[str, dict], prepare: Callable[[Trial], dict], *,
                 retry_failed: bool = False, pending: list[Trial] | None = None):
        # No metric for Tune itself: results reach the searcher whole, and Tune's per-result
        # metric check would refuse the per-epoch results that lack the final metrics.
        super().__init__(metric=None, mode=None)
        self.study, self.rows, self.prepare = study, rows, prepare
        self.retry_failed = retry_failed
        self.search = study.spec.tune.search
        self.metrics = self.search.metrics
        self.codec = Codec(searched_entries(study.spec.space, study.file))
        seed = self.search.seed if self.search.seed is not None else study.spec.tune.seed
        self.inner = OptunaSearch(
            space=OptunaSearch.convert_search_space(self.codec.domains()), metric=self.search.metric,
            mode=self.search.mode, sampler=make_sampler(self.search, seed, study.file),
            points_to_evaluate=[self.codec.encode(t.params) for t in pending or []] or None)
        self.base = study.base_config()
        self.proposed: dict[str, Trial] = {}        # trial id -> trial, every one this search knows
        self._live: dict[str, str] = {}              # Tune's trial id -> trial id
        self._asked: dict[str, list[str]] = {}       # trial id -> the Optuna asks waiting for it
        self._n = 0
        self.launched = 0
        self.reused = 0
        self.exhausted = False
        self.bad_metric: Outcome | None = None

    # ---------------------------------------------------------------- what is known

    def trial(self, values: dict[str, Any]) -> Trial:
        return trial_from_values(self.study, values, base=self.base)

    def tell_recorded(self, points: list[tuple[Trial, dict]]) -> None:
        """Recorded trials this search could have proposed, told before it proposes anything."""
        for t, row in points:
            self.proposed[t.trial_id] = t
            o = outcome(self.metrics, row.get("status"), row)
            value = o.values if o.values is None or len(o.values) > 1 else o.values[0]
            try:
                self.inner.add_evaluated_point(self.codec.encode(t.params), value, error=o.error,
                                               pruned=o.values is None and not o.error)
            except ValueError:
                continue  # a value Optuna's distributions do not hold: not a point of this search

    def _tell(self, ask: str, o: Outcome) -> None:
        result = dict(zip(self.metrics, o.values)) if o.values is not None else None
        self.inner.on_trial_complete(ask, result=result, error=o.error)

    # ---------------------------------------------------------------- Tune's Searcher API

    def suggest(self, trial_id: str) -> dict | str | None:
        if self.exhausted or self.bad_metric is not None:
            return Searcher.FINISHED
        for _ in range(MAX_REPEATS):
            ask = f"ask{self._n}"
            self._n += 1
            values = self.codec.decode(self.inner.suggest(ask))
            if values is None:   # outside the space (a sampler option bent it): not a trial of ours
                self._tell(ask, Outcome(error=True))
                continue
            t = self.trial(values)
            status = (self.rows.get(t.trial_id) or {}).get("status")
            if status in DONE and not (status == "error" and self.retry_failed):
                self.proposed.setdefault(t.trial_id, t)
                self.reused += 1
                self._tell(ask, outcome(self.metrics, status, self.rows[t.trial_id]))
                continue
            if t.trial_id in self._asked:
                self._asked[t.trial_id].append(ask)   # running now: told when it ends
                continue
            try:
                validate_trial(t.config, file=self.study.file)
            except StudyError:
                self._tell(ask, Outcome(error=True))
                continue
            self.proposed[t.trial_id] = t
            self._asked[t.trial_id] = [ask]
            self._live[trial_id] = t.trial_id
            self.launched += 1
            return {"trial": self.prepare(t)}
        self.exhausted = True
        return Searcher.FINISHED

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        # Only final results are told (see the module doc).
        return None

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        tid = self._live.pop(trial_id, None)
        if tid is None:
            return
        result = result or {}
        status = "error" if error else ("completed" if result.get("final") else "stopped")
        o = outcome(self.metrics, status, result)
        if o.missing:
            self.bad_metric = o
        for ask in self._asked.pop(tid, []):
            self._tell(ask, o)

    def save(self, checkpoint_path: str) -> None:
        # The search resumes from the results tables (see the module doc), not from this file;
        # it records which trials this search proposed, for a reader of the experiment folder.
        with open(checkpoint_path, "w") as f:
            json.dump({"proposed": sorted(self.proposed)}, f)

    def restore(self, checkpoint_path: str) -> None:
        return None

    # ---------------------------------------------------------------- after the run

    def metric_error(self) -> StudyError | None:
        o = self.bad_metric
        if o is None:
            return None
        best = suggest(o.missing[0], o.reported)
        return StudyError(f"the trials do not report {', '.join(repr(m) for m in o.missing)}", file=self.study.file,
                          path="tune.search.metric", expected="one of: " + ", ".join(o.reported[:30]),
                          hint=f"did you mean '{best}'?" if best else "add the metric to `evaluate`")


# -------------------------------------------------------------------- the search's past

def recorded_points(study, rows: dict[str, dict], codec: Codec, retry_failed: bool) -> list[tuple[Trial, dict]]:
    """Rows of the results table this search could have proposed: their searched values lie in
    the space and rebuild the same trial id (same base, same constants)."""
    base = study.base_config()
    out = []
    for tid, row in rows.items():
        if row.get("status") not in DONE or (row.get("status") == "error" and retry_failed):
            continue
        values = codec.decode(row)
        if values is None:
            continue
        t = trial_from_values(study, values, base=base)
        if t.trial_id == tid:
            out.append((t, row))
    return out


def cut_off_trials(study, layout: Layout, rows: dict[str, dict], codec: Codec) -> list[Trial]:
    """Trials of this search started in an earlier run that never got a row (Ctrl-C, a crash)."""
    base = study.base_config()
    found: dict[str, Trial] = {}
    for exp in layout.experiments():
        for params in exp.glob(f"*/{PARAMS_FILE}"):
            try:
                trial = json.loads(params.read_text())["trial"]
            except (OSError, ValueError, KeyError, TypeError):
                continue
            tid = trial.get("trial_id")
            if tid in rows or tid in found or not isinstance(trial.get("params"), dict):
                continue
            values = codec.decode(trial["params"])
            t = trial_from_values(study, values, base=base) if values is not None else None
            if t is not None and t.trial_id == tid:
                found[tid] = t
    return list(found.values())


class SearchRun:
    """One `raystudy run` of a searched study: what earlier runs recorded, the budget left, and
    the searcher that proposes the rest."""

    def __init__(self, study, layout: Layout, rows: dict[str, dict], retry_failed: bool = False):
        self.study, self.layout, self.rows, self.retry_failed = study, layout, rows, retry_failed
        self.spec = study.spec.tune.search
        codec = Codec(searched_entries(study.spec.space, study.file))
        self.points = recorded_points(study, rows, codec, retry_failed)
        self.pending = cut_off_trials(study, layout, rows, codec)
        self.remaining = max(0, self.spec.num_samples - len(self.points))
        self.searcher: StudySearcher | None = None

    def count(self, summary) -> None:
        """The run's summary counts what earlier runs of this search recorded."""
        summary.total = max(self.spec.num_samples, len(self.points))
        for t, row in self.points:
            summary.skip(t.trial_id, row)

    def describe(self) -> str:
        s = self.spec
        goal = ", ".join(f"{m} ({d})" for m, d in zip(s.metrics, s.mode if isinstance(s.mode, list) else [s.mode]))
        return (f"search {s.name}/{s.sampler} on {goal}: {len(self.points)} of {s.num_samples} trials recorded"
                + (f", {len(self.pending)} cut off (resumed first)" if self.pending else ""))

    def make_searcher(self, prepare: Callable[[Trial], dict]) -> StudySearcher:
        self.searcher = StudySearcher(self.study, self.rows, prepare, retry_failed=self.retry_failed,
                                      pending=self.pending)
        self.searcher.tell_recorded(self.points)
        return self.searcher

    def expected(self) -> int:
        """Trials the run should have recorded: fewer than the budget when the search ended early."""
        s = self.searcher
        if s is not None and (s.exhausted or s.bad_metric is not None):
            return s.launched
        return self.remaining

    def trials(self) -> list[Trial]:
        """Every trial of this search so far (study.json lists them)."""
        known = {t.trial_id: t for t, _ in self.points}
        if self.searcher is not None:
            known.update(self.searcher.proposed)
        return list(known.values())

    def best_text(self) -> str | None:
        """The best completed trial on the first metric, in words."""
        m, mode = self.spec.metrics[0], (self.spec.mode[0] if isinstance(self.spec.mode, list) else self.spec.mode)
        trials = {t.trial_id: t for t in self.trials()}
        done = [(tid, r) for tid, r in self.rows.items() if tid in trials
                and r.get("status") == "completed" and _finite(r.get(m))]
        if not done:
            return None
        tid, row = (max if mode == "max" else min)(done, key=lambda x: x[1][m])
        return f"{tid} {m}={row[m]:.4g} ({trials[tid].describe()})"
