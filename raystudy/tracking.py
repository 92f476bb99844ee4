"""`tracking:` every trial's numbers copied to TensorBoard, MLflow and W&B through Ray Tune's
own logger callbacks (TBXLoggerCallback, MLflowLoggerCallback, WandbLoggerCallback).

Tune hands each callback every report: the per-epoch ones (loss, val_accuracy, lr, ...) at
their epoch, and the final one with every metric scalar. What Tune's callbacks leave out,
added here: the curves (robustness / invariance profiles), which travel as JSON in the final
report, and the per-epoch table, which after a restart is complete only in that report.
TensorBoard gets each curve as scalars `curves/<metric>/<column>` over the point's index (and
`curves/<metric>/x`), MLflow gets `curves.csv` and `epochs.csv` artifacts, W&B `curves` and
`epochs` tables. The results tables stay the record; trackers are copies.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
from pathlib import Path

import pandas as pd
from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.air.integrations.wandb import WandbLoggerCallback, _WandbLoggingActor
from ray.tune.logger import TBXLoggerCallback

from .spec.paths import flatten

# How long the driver waits for a W&B offline run to be written at a trial's end.
OFFLINE_WAIT_S = 120
# Tune's bookkeeping in every result: not worth a chart.
_BOOKKEEPING = {"timestamp", "pid", "training_iteration", "time_this_iter_s", "time_total_s", "time_since_restore",
                "iterations_since_restore", "done", "final", "should_checkpoint"}


def curves_of(result: dict) -> list[dict]:
    return json.loads(result.get("_curves") or "[]")


def history_of(result: dict) -> list[dict]:
    return json.loads(result.get("_history") or "[]")


def _csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    pd.DataFrame(rows).to_csv(buf, index=False)
    return buf.getvalue()


def trial_params(trial: dict) -> dict[str, str]:
    """A trial's id, its searched/varied values and its whole config as flat dotted names."""
    out = {"trial_id": trial["trial_id"]}
    for k, v in flatten(trial.get("config", {})).items():
        out[k] = json.dumps(v) if isinstance(v, (list, dict)) else str(v)
    for k, v in trial.get("params", {}).items():
        out.setdefault(k, json.dumps(v) if isinstance(v, (list, dict)) else str(v))
    return out


def _numbers(result: dict) -> dict[str, float]:
    out = {}
    for k, v in result.items():
        if k in _BOOKKEEPING or k.startswith("_") or k == "config":
            continue
        if isinstance(v, (int, float)) and math.isfinite(v):
            out[k] = float(v)
    return out


class StudyTBXCallback(TBXLoggerCallback):
    """Tune's TensorBoard logger (events in each trial's folder) plus the trial's curves."""

    def __init__(self):
        super().__init__()
        self._final: dict = {}

    def log_trial_result(self, iteration, trial, result):
        super().log_trial_result(iteration, trial, result)
        if result.get("final"):
            self._final[trial] = result

    def log_trial_end(self, trial, failed: bool = False):
        final = self._final.pop(trial, None)
        writer = self._trial_writer.get(trial)
        if final is not None and writer is not None:
            by_metric: dict[str, list[dict]] = {}
            for row in curves_of(final):
                by_metric.setdefault(str(row.get("metric")), []).append(row)
            for metric, rows in by_metric.items():
                rows = sorted(rows, key=lambda r: (r.get("x") is None, r.get("x") or 0))
                for i, row in enumerate(rows):
                    for col, v in row.items():
                        if col != "metric" and isinstance(v, (int, float)) and math.isfinite(v):
                            writer.add_scalar(f"curves/{metric}/{col}", float(v), global_step=i)
            writer.flush()
        super().log_trial_end(trial, failed)


# MLflow names: alphanumerics, _ - . space : / only. `robustness.pgd.acc@8/255` -> `...acc:8/255`.
_MLFLOW_BAD = re.compile(r"[^\w.\- :/]")


def mlflow_name(key: str) -> str:
    return _MLFLOW_BAD.sub(lambda m: ":" if m.group() == "@" else "_", key)


class StudyMLflowCallback(MLflowLoggerCallback):
    """Tune's MLflow logger: one run per trial, named by trial id, with the trial's config as
    params, metrics at their epoch, and the curves and epochs as CSV artifacts."""

    def __init__(self, spec, out: Path, study: str):
        uri = spec.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or (Path(out).resolve() / "mlruns").as_uri()
        if "://" not in uri or uri.startswith("file:"):
            # MLflow 3 refuses a file store unless told; a study that names one wants it.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        super().__init__(tracking_uri=uri, experiment_name=spec.experiment_name or study,
                         tags={"raystudy.study": study, **spec.tags})
        self.artifacts = spec.artifacts
        self._final: dict = {}

    def log_trial_start(self, trial):
        if trial in self._trial_runs:
            return  # a retried trial keeps its run
        t = trial.config["trial"]
        run = self.mlflow_util.start_run(tags={**self.tags, "raystudy.trial_id": t["trial_id"]},
                                         run_name=t["trial_id"])
        self._trial_runs[trial] = run.info.run_id
        params = {mlflow_name(k): v[:6000] for k, v in trial_params(t).items()}
        self.mlflow_util.log_params(run_id=run.info.run_id, params_to_log=params)

    def log_trial_result(self, iteration, trial, result):
        if trial not in self._trial_runs:
            self.log_trial_start(trial)
        if result.get("final"):
            self._final[trial] = result
        step = int(result.get("epoch") or result.get("epochs_run") or result.get("training_iteration") or 0)
        metrics = {mlflow_name(k): v for k, v in _numbers(result).items()}
        self.mlflow_util.log_metrics(run_id=self._trial_runs[trial], metrics_to_log=metrics, step=step)

    def log_trial_end(self, trial, failed: bool = False):
        final = self._final.pop(trial, None)
        if self.artifacts and final is not None and trial in self._trial_runs:
            client = self.mlflow_util._get_client()
            run_id = self._trial_runs[trial]
            for name, rows in (("curves.csv", curves_of(final)), ("epochs.csv", history_of(final))):
                if rows:
                    client.log_text(run_id, _csv(rows), name)
        super().log_trial_end(trial, failed)


class StudyWandbActor(_WandbLoggingActor):
    def run(self):
        try:
            super().run()
        finally:
            # wandb 0.31's service writes the run file only when it is torn down; Tune kills
            # this actor right after run() returns, which without this loses the whole run
            # in offline mode (the .wandb file keeps its 7-byte header and nothing else).
            teardown = getattr(self._wandb, "teardown", None)
            if teardown is not None:
                teardown()

    def _handle_result(self, result):
        log, config_update = super()._handle_result(result)
        for key, rows in (("curves", curves_of(result)), ("epochs", history_of(result))):
            if rows:
                log[key] = self._wandb.Table(dataframe=pd.DataFrame(rows))
        return log, config_update


class StudyWandbCallback(WandbLoggerCallback):
    """Tune's W&B logger (a run per trial, written in the trial's folder in offline mode)
    plus the curves and epochs tables."""

    _logger_actor_cls = StudyWandbActor

    def __init__(self, spec, study: str):
        kwargs = {k: v for k, v in (("entity", spec.entity), ("tags", spec.tags or None)) if v is not None}
        super().__init__(project=spec.project or study, group=spec.group, mode=spec.mode, **kwargs)
        self.mode = spec.mode

    def setup(self, *args, **kwargs):
        # Tune asks for an API key unless WANDB_MODE says offline/disabled; the study says so.
        with _env("WANDB_MODE", None if self.mode == "online" else self.mode):
            super().setup(*args, **kwargs)

    def log_trial_end(self, trial, failed: bool = False):
        # Offline runs live in the trial's folder, which Tune copies into the results folder
        # before it waits for the logging actors (on_experiment_end): without waiting here,
        # the last trial's run file would arrive there empty.
        self._signal_logging_actor_stop(trial=trial)
        future = self._trial_logging_futures.get(trial)
        if future is not None and self.mode != "online":
            import ray
            ray.wait([future], timeout=OFFLINE_WAIT_S)
        self._cleanup_logging_actors()


@contextlib.contextmanager
def _env(name: str, value: str | None):
    old = os.environ.get(name)
    if value is not None:
        os.environ[name] = value
    try:
        yield
    finally:
        if value is not None:
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old


def tracker_callbacks(spec, out: Path, study: str) -> list:
    """The callbacks a study's `tracking:` section (spec/tunespec.TrackingSpec) asks for."""
    cbs: list = []
    if spec.tensorboard:
        cbs.append(StudyTBXCallback())
    if spec.mlflow is not None:
        cbs.append(StudyMLflowCallback(spec.mlflow, out, study))
    if spec.wandb is not None:
        cbs.append(StudyWandbCallback(spec.wandb, study))
    return cbs
