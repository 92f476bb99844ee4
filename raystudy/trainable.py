"""The Ray Tune trainable: the only place that calls tune.report.

Each epoch reports its metrics (and, every `checkpoint_every` epochs, a checkpoint
with model, optimizer, schedule, method and RNG state) so a trial whose worker dies
resumes where it was. A trial interrupted in an earlier `raystudy run` resumes from
the checkpoint the runner found for it (`trial["resume_from"]`); a warm start loads the
weights the runner resolved for it (`trial["init_weights"]`). The final report
carries every metric, the full epoch history and the final checkpoint: the weights (model.pt)
and the last training state (state.pt), so Ray's own `get_best_checkpoint(trial, "accuracy")`
finds the metrics that belong to it.

A diverged trial (NaN/inf loss) is deterministic: retrying it from its last checkpoint
would diverge again, so it ends with a final report marked `_failed` instead of an
exception, and the retry budget (`tune.retries`) stays for real crashes.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import tempfile
from pathlib import Path

import torch
from ray import tune

from .execute import json_safe, run_trial, set_threads
from .faults import faults_for, leak_process_state
from .isolation import fresh_trial
from .layout import MODEL_FILE, STATE_FILE
from .spec.paths import canonical
from .train import NonFiniteLoss


def data_key(data_cfg: dict) -> str:
    return canonical(data_cfg)


def load_state(path: str | Path) -> dict:
    # weights_only: a checkpoint is data, never code (safety: nothing from disk executes).
    return torch.load(Path(path), map_location="cpu", weights_only=True)


# ------------------------------------------------------------------ test-only faults

def _fire(fault: dict, epoch: int) -> None:
    kind = fault["kind"]
    if kind == "kill":
        # SIGKILL: no Python cleanup, no last report, exactly like a lost worker.
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "raise":
        raise RuntimeError(f"injected fault after epoch {epoch}")
    if kind == "oom":
        raise torch.OutOfMemoryError(f"injected out-of-memory after epoch {epoch}")
    if kind == "nan":
        raise NonFiniteLoss(f"loss became nan in epoch {epoch} (injected)")


# ------------------------------------------------------------------------ reporter

class TuneReporter:
    """execute.Reporter for Ray Tune: per-epoch results, checkpoints, restore."""

    def __init__(self, checkpoint_every: int, epochs_total: int, resume_from: str | None = None,
                 faults: list[dict] | None = None):
        self.every = checkpoint_every
        self.total = epochs_total
        self.resume_from = resume_from
        self.faults = faults or []
        self.history: list[dict] = []
        self.resumed_from_epoch = 0
        self.restored = False
        self.model = None
        self._last_state = None

    def epoch(self, metrics: dict, get_state) -> None:
        e = metrics["epoch"]
        self.history.append(dict(metrics))
        self._last_state = get_state
        if not self.restored:
            for f in self.faults:
                if f["epoch"] == e:
                    _fire(f, e)
        if self.every and (e % self.every == 0 or e == self.total):
            with tempfile.TemporaryDirectory() as d:
                torch.save(get_state(), os.path.join(d, STATE_FILE))
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
        else:
            tune.report(metrics)

    def _extras(self) -> dict:
        return {"resumed_from_epoch": self.resumed_from_epoch,
                # Which node and process ran the trial: shows how a cluster spread the
                # study, and which trials shared a reused worker.
                "node_id": _node_id(),
                "worker_pid": os.getpid(),
                "_history": json.dumps([{k: json_safe(v) for k, v in h.items()} for h in self.history])}

    def final(self, metrics: dict) -> None:
        metrics = {**metrics, **self._extras()}
        if self.model is None:
            tune.report(metrics)
        else:
            state = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
            with tempfile.TemporaryDirectory() as d:
                torch.save(state, os.path.join(d, MODEL_FILE))
                if self.every and self._last_state is not None:
                    # The runner keeps one checkpoint per trial: this one, with the metrics it
                    # belongs to; the training state rides along so a trial whose end was not
                    # recorded (the driver died) resumes here instead of from scratch.
                    torch.save(self._last_state(), os.path.join(d, STATE_FILE))
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
        if not self.restored and any(f["kind"] == "leak" for f in self.faults):
            leak_process_state()

    def failed(self, reason: str, values: dict | None = None) -> None:
        last = self.history[-1] if self.history else {}
        tune.report({"final": True, "_failed": reason, "epochs_run": last.get("epoch", self.resumed_from_epoch),
                     **(values or {}), **self._extras()})

    def restore(self) -> dict | None:
        state = None
        ckpt = tune.get_checkpoint()
        if ckpt is not None:
            # A retry inside this experiment (the worker died): Tune hands back the last one.
            with ckpt.as_directory() as d:
                path = Path(d) / STATE_FILE
                if path.exists():
                    state = load_state(path)
        elif self.resume_from:
            # A trial interrupted in an earlier `raystudy run` (Ctrl-C, driver crash).
            try:
                state = load_state(Path(self.resume_from) / STATE_FILE)
            except Exception as e:  # noqa: BLE001 - a torn checkpoint costs a restart, not the trial
                print(f"raystudy: cannot read checkpoint {self.resume_from} ({e}); starting the trial afresh",
                      flush=True)
                state = None
        if state is not None:
            self.restored = True
            fit = state.get("fit", {})
            self.resumed_from_epoch = int(fit.get("epoch", 0))
            self.history = [dict(h) for h in fit.get("history", [])]
        return state


def _quiet_worker_logs() -> None:
    # Ray Train logs 'Checkpoint successfully created at: ...' at INFO for every epoch;
    # warnings and errors still reach the console.
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    logging.getLogger("ray.tune").setLevel(logging.WARNING)


def _node_id() -> str | None:
    try:
        import ray
        return ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - outside Ray (unit tests) there is no node
        return None


def trainable(config: dict, bundles: dict | None = None, cpus: float = 1.0, health: dict | None = None) -> None:
    trial = config["trial"] if health is None else {**config["trial"], "health": health}
    # A reused worker ran other trials before this one: start from a fresh worker's state.
    with fresh_trial(int(trial["config"].get("seed", 0))):
        _run(trial, bundles, cpus)


def _run(trial: dict, bundles: dict | None, cpus: float) -> None:
    _quiet_worker_logs()
    set_threads(cpus)
    bundle = bundles[data_key(trial["config"].get("data", {}))]
    train_cfg = trial["config"].get("train", {})
    stages = train_cfg.get("stages")
    epochs = sum(s["epochs"] for s in stages) if stages else train_cfg.get("epochs", 0)
    reporter = TuneReporter(int(train_cfg.get("checkpoint_every", 1)), epochs,
                            resume_from=trial.get("resume_from"), faults=faults_for(trial))

    def keep_model(model):
        reporter.model = model

    try:
        run_trial(trial, bundle, reporter, on_model=keep_model)
    except NonFiniteLoss as e:
        # The nonfinite_loss health check's value: the trial stopped on a NaN/inf loss.
        reporter.failed(f"NonFiniteLoss: {e}", {"health.nonfinite_loss": 1.0})
