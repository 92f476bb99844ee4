"""Robust validation during training (`every_epochs`) and best-epoch selection (`train.select`).

Rice, Wong and Kolter (ICML 2020) pick the checkpoint with the best held-out robust accuracy
because adversarial training overfits robustly. The tests here assert that the weights
evaluated at the end are exactly the selected epoch's, that the selection reads only the
validation split, and that a mistaken selection is refused before any training starts.
"""

from __future__ import annotations

import pytest
import torch

from raystudy.data import load
from raystudy.errors import StudyError
from raystudy.execute import run_trial
from raystudy.metrics.base import Metric, MetricOptions, MetricResult
from raystudy.registry import METRICS
from raystudy.spec.schema import DataSpec
from raystudy.spec.validate import validate_trial
from raystudy.train import quick_accuracy

DATA = {"dataset": "synthetic", "train_size": 96, "test_size": 48, "val_fraction": 0.25}
PEAK = 3


class Recorder:
    """execute.Reporter that keeps a copy of the weights after every epoch."""

    def __init__(self):
        self.epochs: list[dict] = []
        self.weights: dict[int, dict] = {}

    def epoch(self, metrics, get_state):
        self.epochs.append(dict(metrics))
        self.weights[metrics["epoch"]] = {k: v.clone() for k, v in get_state()["model"].items()}

    def final(self, metrics):
        pass

    def restore(self):
        return None


class Probe(Metric):
    """A validation number engineered to peak at epoch PEAK: -(call - PEAK)^2 over the calls
    made on the validation split (one per epoch with every_epochs: 1)."""

    def __init__(self):
        self.splits: list[str] = []

    def compute(self, run, o):
        self.splits.append(run.split)
        k = self.splits.count("val")
        return MetricResult({"probe": float(-(k - PEAK) ** 2) if run.split == "val" else 0.0})


@pytest.fixture
def probe():
    p = Probe()
    METRICS.register("probe", MetricOptions)(p)
    try:
        yield p
    finally:
        # Registered for this test only: the contract tests walk every registered metric.
        METRICS._entries.pop("probe")


def config(train: dict, evaluate: list, data: dict | None = None) -> dict:
    return {"seed": 0, "device": "cpu", "data": data or DATA,
            "model": {"arch": "stdcnn_mnist", "channels": [4, 4, 8, 8], "hidden": 16},
            "train": {"batch_size": 32, **train}, "evaluate": evaluate}


def run(cfg: dict):
    rep, models = Recorder(), []
    final = run_trial({"trial_id": "t", "params": {}, "config": cfg}, load(DataSpec(**cfg["data"])), rep,
                      on_model=models.append)
    return final, rep, models[0]


def test_the_evaluated_weights_are_exactly_the_peak_epochs(probe):
    cfg = config({"epochs": 5, "optimizer": {"name": "adam", "lr": 0.003}, "select": {"by": "val.probe"}},
                 ["accuracy", {"probe": {"every_epochs": 1}}])
    final, rep, model = run(cfg)
    assert [e["val.probe"] for e in rep.epochs] == [-4.0, -1.0, 0.0, -1.0, -4.0]
    assert probe.splits == ["val"] * 5 + ["test"]   # selection never looked at the test split
    assert (final["selected_epoch"], final["selected_value"], final["selected_last_value"]) == (PEAK, 0.0, -4.0)
    assert final["selected_by"] == "val.probe" and final["epochs_run"] == 5
    # Training went on after the peak, and the evaluated model holds the peak's weights.
    assert any(not torch.equal(rep.weights[PEAK][k], v) for k, v in rep.weights[5].items())
    for k, v in model.state_dict().items():
        assert torch.equal(v, rep.weights[PEAK][k]), k
    data = load(DataSpec(**DATA)).to("cpu")
    assert final["accuracy"] == pytest.approx(quick_accuracy(model.eval(), data.x_test, data.y_test), abs=1e-9)


def test_select_by_val_loss_keeps_the_epoch_before_training_breaks():
    # Two good epochs, then the lr jumps x200 to Adam at 0.6 and wrecks the model (finite, but
    # far from any minimum).
    train = {"epochs": 5, "optimizer": {"name": "adam", "lr": 0.003},
             "schedule": {"name": "multistep", "milestones": [2], "gamma": 200.0},
             "select": {"by": "val_loss", "mode": "min"}}
    final, rep, model = run(config(train, ["accuracy"]))
    losses = [e["val_loss"] for e in rep.epochs]
    best = min(range(5), key=lambda i: (losses[i], -i)) + 1
    assert final["selected_epoch"] == best <= 2, losses
    assert final["selected_value"] == losses[best - 1] and final["selected_last_value"] == losses[-1]
    for k, v in model.state_dict().items():
        assert torch.equal(v, rep.weights[best][k]), k


def test_a_staged_run_selects_among_its_last_stages_epochs(probe):
    # The probe peaks at epoch 3, in the first stage; the row is the second stage's training,
    # so its best epoch is 4.
    stages = [{"epochs": 3, "optimizer": {"name": "adam", "lr": 0.003}},
              {"epochs": 2, "optimizer": {"name": "adam", "lr": 0.001}}]
    final, rep, model = run(config({"stages": stages, "select": {"by": "val.probe"}},
                                   [{"probe": {"every_epochs": 1}}]))
    assert [e["val.probe"] for e in rep.epochs] == [-4.0, -1.0, 0.0, -1.0, -4.0]
    assert (final["selected_epoch"], final["selected_value"]) == (4, -1.0)
    for k, v in model.state_dict().items():
        assert torch.equal(v, rep.weights[4][k]), k


def test_without_select_the_last_weights_are_evaluated_and_nothing_is_recorded():
    final, rep, model = run(config({"epochs": 2, "optimizer": {"name": "adam", "lr": 0.003}}, ["accuracy"]))
    assert "selected_epoch" not in final
    for k, v in model.state_dict().items():
        assert torch.equal(v, rep.weights[2][k]), k


def test_a_selection_name_no_metric_logs_fails_the_trial_at_its_last_epoch(probe):
    # `probe` declares no outputs, so the spec accepts any val.probe.* name; the worker refuses
    # it once every metric has run (after the last epoch) instead of evaluating the last weights.
    cfg = config({"epochs": 2, "select": {"by": "val.probe.typo"}}, [{"probe": {"every_epochs": 1}}])
    with pytest.raises(ValueError, match=r"train.select.by 'val.probe.typo' was never logged .*val.probe"):
        run(cfg)


# ------------------------------------------------------------------------- errors before Ray

PGD = {"robustness": {"attack": "pgd", "eps": [0, 0.1], "steps": 2, "n": 16}}


def refused(cfg: dict) -> str:
    with pytest.raises(StudyError) as e:
        validate_trial(cfg, file="s.yaml")
    return str(e.value)


def test_select_by_a_metric_only_taken_after_training_is_refused():
    msg = refused(config({"epochs": 1, "select": {"by": "val.robustness.pgd.auc"}}, [PGD]))
    assert "train.select.by" in msg and "s.yaml" in msg
    assert "evaluate.0.robustness" in msg and "every_epochs" in msg


def test_select_by_a_test_split_number_points_to_the_validation_one():
    msg = refused(config({"epochs": 1, "select": {"by": "robustness.pgd.auc"}}, [PGD]))
    assert "train.select.by" in msg and "'val.robustness.pgd.auc'" in msg


def test_select_by_a_typo_gets_did_you_mean():
    msg = refused(config({"epochs": 1, "select": {"by": "val_acuracy"}}, ["accuracy"]))
    assert "train.select.by" in msg and "did you mean 'val_accuracy'" in msg
    timed = {"robustness": {**PGD["robustness"], "every_epochs": 2}}
    msg = refused(config({"epochs": 1, "select": {"by": "val.robustnes.pgd.auc"}}, [timed]))
    assert "did you mean 'val.robustness" in msg


def test_select_by_accuracy_points_to_val_accuracy():
    for by in ("accuracy", "val.accuracy"):
        msg = refused(config({"epochs": 1, "select": {"by": by}}, ["accuracy"]))
        assert "train.select.by" in msg and "did you mean 'val_accuracy'" in msg


def test_validation_during_training_needs_a_validation_split():
    no_val = {**DATA, "val_fraction": 0.0}
    msg = refused(config({"epochs": 1}, [{"accuracy": {"every_epochs": 1}}], data=no_val))
    assert "data.val_fraction" in msg and "evaluate.0.accuracy.every_epochs" in msg
    msg = refused(config({"epochs": 1, "select": {"by": "val_accuracy"}}, ["accuracy"], data=no_val))
    assert "data.val_fraction" in msg and "train.select.by" in msg


def test_a_loss_needs_an_explicit_mode():
    msg = refused(config({"epochs": 1, "select": {"by": "val_loss"}}, ["accuracy"]))
    assert "train.select" in msg and "mode: min" in msg
    refused(config({"epochs": 1, "select": {"by": "val_accuracy", "mode": "best"}}, ["accuracy"]))


def test_a_study_file_is_refused_with_its_line_before_ray(tmp_path):
    from raystudy.spec import load_study
    f = tmp_path / "s.yaml"
    f.write_text("""name: s
data: {dataset: synthetic, train_size: 64, test_size: 32}
model: {arch: stdcnn_mnist}
train:
  epochs: 2
  select: {by: val.robustness.pgd.acu}
space:
  seed: {grid: [0, 1]}
evaluate:
  - robustness: {attack: pgd, eps: [0, 0.1], every_epochs: 1}
""")
    with pytest.raises(StudyError) as e:
        load_study(f)
    msg = str(e.value)
    assert "s.yaml" in msg and "train.select.by" in msg and "line 6" in msg, msg
    assert "did you mean 'val.robustness.pgd.auc'" in msg, msg


def test_valid_selections_pass():
    timed = {"robustness": {**PGD["robustness"], "every_epochs": 2}}
    for by in ("val_accuracy", "val.robustness.pgd.auc"):
        validate_trial(config({"epochs": 1, "select": {"by": by}}, [timed]))


def test_select_enters_the_trial_id_only_when_set():
    from raystudy.spec.schema import TrainSpec
    plain = TrainSpec(epochs=1).model_dump()
    assert "select" not in plain
    chosen = TrainSpec(epochs=1, select={"by": "val_accuracy"}).model_dump()
    assert chosen["select"] == {"by": "val_accuracy", "mode": "max"}


# ----------------------------------------------------------------- worker restart (real Ray)

RESTART_STUDY = """
name: selkill
data: {dataset: synthetic, train_size: 96, test_size: 48, val_fraction: 0.25}
model: {arch: stdcnn_mnist, channels: [4, 4, 8, 8], hidden: 16}
train:
  batch_size: 32
  epochs: 4
  optimizer: {name: adam, lr: 0.003}
  schedule: {name: multistep, milestones: [2], gamma: 200.0}
  select: {by: val_loss, mode: min}
space:
  seed: {grid: [0]}
evaluate: [accuracy]
resources: {cpu: 1}
tune: {retries: 1}
"""


@pytest.mark.slow   # real Ray trials
def test_a_worker_restart_after_the_best_epoch_keeps_its_weights(ray_local, tmp_path, monkeypatch):
    import pandas as pd

    from raystudy.results import EPOCHS, TRIALS
    from raystudy.runner import run_study
    from raystudy.spec import load_study
    f = tmp_path / "selkill.yaml"
    f.write_text(RESTART_STUDY)
    monkeypatch.setenv("RAYSTUDY_FAULT", "kill@3")   # SIGKILL after epoch 3, before reporting it
    study = load_study(f)
    s = run_study(study, tmp_path / "res", dashboard=False, verbose=False)
    assert (s.completed, s.failed) == (1, 0)
    row = pd.read_parquet(s.out / TRIALS).set_index("trial_id").loc[study.trials[0].trial_id]
    epochs = pd.read_parquet(s.out / EPOCHS)
    # The second worker started from the epoch-2 checkpoint, so the best epoch (1 or 2, before
    # the lr jump) was only ever seen by the worker that died: it came back with the checkpoint.
    assert row["resumed_from_epoch"] == 2 and row["epochs_run"] == 4
    losses = epochs.sort_values("epoch")["val_loss"].tolist()
    best = min(range(4), key=lambda i: (losses[i], -i)) + 1
    assert row["selected_epoch"] == best <= 2, losses
    assert row["selected_value"] == pytest.approx(losses[best - 1])
    assert row["selected_last_value"] == pytest.approx(losses[-1]) and row["selected_by"] == "val_loss"
    # The saved final weights (model.pt, what a warm start loads) are the uninterrupted run's
    # selected ones, bit for bit.
    n = torch.get_num_threads()
    torch.set_num_threads(1)   # as in the trial's worker (resources.cpu = 1)
    try:
        ref, rep, model = run(study.trials[0].to_ray()["config"])
    finally:
        torch.set_num_threads(n)
    assert ref["selected_epoch"] == best
    saved = torch.load(s.out / row["checkpoint"] / "model.pt", weights_only=True)
    for k, v in model.state_dict().items():
        assert torch.equal(saved[k], v), k
    assert row["accuracy"] == pytest.approx(ref["accuracy"])
