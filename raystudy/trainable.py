"""The Ray Tune trainable: the only place that calls tune.report.

Each epoch reports its metrics (and, every `checkpoint_every` epochs, a checkpoint
with model, optimizer, schedule, method and RNG state) so a trial whose worker dies
resumes where it was. The final report carries every metric and the final weights.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from ray import tune

from .execute import run_trial, set_threads
from .spec.space import canonical

STATE_FILE = "state.pt"
MODEL_FILE = "model.pt"


def data_key(data_cfg: dict) -> str:
    return canonical(data_cfg)


class TuneReporter:
    def __init__(self, checkpoint_every: int, epochs_total: int):
        self.every = checkpoint_every
        self.total = epochs_total

    def epoch(self, metrics: dict, get_state) -> None:
        e = metrics["epoch"]
        if self.every and (e % self.every == 0 or e == self.total):
            with tempfile.TemporaryDirectory() as d:
                torch.save(get_state(), os.path.join(d, STATE_FILE))
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
        else:
            tune.report(metrics)

    def final(self, metrics: dict, model_state: dict | None = None) -> None:
        if model_state is None:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as d:
            torch.save(model_state, os.path.join(d, MODEL_FILE))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))

    def restore(self) -> dict | None:
        ckpt = tune.get_checkpoint()
        if ckpt is None:
            return None
        with ckpt.as_directory() as d:
            path = Path(d) / STATE_FILE
            if not path.exists():
                return None
            # weights_only: a checkpoint is data, never code (see PITFALLS / safety).
            return torch.load(path, map_location="cpu", weights_only=True)


class _FinalWithModel(TuneReporter):
    """Keeps a handle on the model so the final report can carry its weights."""

    model = None

    def final(self, metrics):
        state = {k: v.detach().cpu() for k, v in self.model.state_dict().items()} if self.model is not None else None
        super().final(metrics, state)


def trainable(config: dict, bundles: dict | None = None, cpus: float = 1.0) -> None:
    trial = config["trial"]
    set_threads(cpus)
    bundle = bundles[data_key(trial["config"].get("data", {}))]
    train_cfg = trial["config"].get("train", {})
    stages = train_cfg.get("stages")
    epochs = sum(s["epochs"] for s in stages) if stages else train_cfg.get("epochs", 0)
    reporter = _FinalWithModel(int(train_cfg.get("checkpoint_every", 1)), epochs)

    def keep_model(model):
        reporter.model = model

    run_trial(trial, bundle, reporter, on_model=keep_model)
