"""What a study's `tune:` and `tracking:` sections add to the Tuner: a search algorithm, an
early-stopping scheduler, tracker callbacks. Imported by the runner only when Ray runs.

Schedulers read the per-epoch reports (`time_attr="epoch"`): a trial's last report is its
final evaluation, which carries no epoch and so never reaches them. They never stop a trial
at its last epoch (its training is done, only the evaluation is left), and a stopped trial
is recorded as `stopped` with the epoch it reached (progress.StudyCallback), never re-run.
"""

from __future__ import annotations

import contextlib
import os

from ray.tune.schedulers import AsyncHyperBandScheduler, MedianStoppingRule, TrialScheduler

from .spec.tuning import max_epochs, trial_epochs

# Tune checks that every result carries the scheduler's metric; the final report (metrics,
# no epoch) does not carry val_accuracy, and the epoch reports do not carry the final
# metrics. Each consumer here reads only the results that hold its metric.
_STRICT_ENV = "TUNE_DISABLE_STRICT_METRIC_CHECKING"


class _SparesLastEpoch:
    """Stopping a trial after its last epoch saves nothing and loses its evaluation."""

    def on_trial_result(self, tune_controller, trial, result):
        action = super().on_trial_result(tune_controller, trial, result)
        if action == TrialScheduler.STOP and result.get("epoch", 0) >= trial_epochs(trial.config["trial"]["config"]):
            return TrialScheduler.CONTINUE
        return action


class StudyASHA(_SparesLastEpoch, AsyncHyperBandScheduler):
    """ASHA (Li et al., "A System for Massively Parallel Hyperparameter Tuning", 2020) on epochs."""


class StudyMedianStopping(_SparesLastEpoch, MedianStoppingRule):
    """The median stopping rule (Golovin et al., "Google Vizier", 2017) on epochs."""


def make_scheduler(study) -> TrialScheduler | None:
    s = study.spec.tune.scheduler
    if s is None:
        return None
    max_t = max_epochs(study)
    if s.name == "asha":
        return StudyASHA(time_attr="epoch", metric=s.metric, mode=s.mode, max_t=max_t,
                         grace_period=s.grace_period, reduction_factor=s.reduction_factor or 4,
                         brackets=s.brackets or 1, stop_last_trials=False)
    # min_time_slice=inf: never pause a trial to let others catch up (a pause would restart
    # its worker from a checkpoint); with too few samples it just goes on.
    return StudyMedianStopping(time_attr="epoch", metric=s.metric, mode=s.mode, grace_period=s.grace_period,
                               min_samples_required=s.min_samples_required or 3, min_time_slice=float("inf"))


def tune_config_extras(study, searcher=None, num_samples: int | None = None) -> dict:
    """Keyword arguments for tune.TuneConfig beyond the runner's own."""
    extra: dict = {}
    sched = make_scheduler(study)
    if sched is not None:
        extra["scheduler"] = sched
    if searcher is not None:
        extra["search_alg"] = searcher
        extra["num_samples"] = num_samples
    return extra


def callbacks(study, out) -> list:
    """The tracker callbacks `tracking:` asks for (raystudy.tracking)."""
    if not study.spec.tracking.enabled:
        return []
    from .tracking import tracker_callbacks
    return tracker_callbacks(study.spec.tracking, out, study.name)


@contextlib.contextmanager
def relaxed_metric_check(active: bool):
    """Tune's per-result metric check off while a scheduler or searcher is used (see _STRICT_ENV)."""
    old = os.environ.get(_STRICT_ENV)
    if active:
        os.environ[_STRICT_ENV] = "1"
    try:
        yield
    finally:
        if active:
            if old is None:
                os.environ.pop(_STRICT_ENV, None)
            else:
                os.environ[_STRICT_ENV] = old
