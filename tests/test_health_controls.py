"""The three positive controls of the health checks (issue 15, item 5), each a trial of one
tiny study on the embedded MNIST:

* `normal`: a StdCNN trained with Adam 1e-3: it learns, its PGD profile is sound: no flag;
* `masked`: the same with `model.input_transform: binarize` in front, whose input gradient is
  exactly zero (shattered gradients, Athalye et al. 2018): the masking checks must fire;
* `stuck`: SGD lr 0.05, momentum 0.9, batch 64, which leaves a plain StdCNN at chance
  (PITFALLS): `did_not_learn` must fire.

A check that were a constant could not pass both the normal control and the one meant to
trip it. The fast test runs the trials Ray-free (raystudy.execute.run_trial) and records them
through the results store, where the driver judges them; the slow one runs the same study
through `raystudy run` on a real local Ray and reads trials.parquet.
"""

from __future__ import annotations

import pandas as pd
import pytest

from raystudy.cli import main
from raystudy.data import load
from raystudy.execute import run_trial
from raystudy.results import ResultStore
from raystudy.spec.load import load_study

STUDY = """
name: health_controls
data: {dataset: mnist, train_size: 400, test_size: 100, val_fraction: 0}
model: {arch: stdcnn_mnist}
train:
  epochs: 2
  batch_size: 64
  optimizer: {name: adam, lr: 0.001}
  method: {name: natural}
space:
  control:
    zip:
      model.input_transform: [null, {name: binarize, threshold: 0.5}, null]
      train.optimizer: [{name: adam, lr: 0.001}, {name: adam, lr: 0.001}, {name: sgd, lr: 0.05, momentum: 0.9}]
evaluate:
  - accuracy
  - robustness: {attack: pgd, eps: [0, 0.15, 0.3], n: 60}
health: {n: 60, checks: {gradient_free_gap: {queries: 100}}}
resources: {cpu: 1, gpu: 0}
"""
NAMES = {0: "normal", 1: "masked", 2: "stuck"}
P = "health.robustness.pgd."


def _by_control(trials: pd.DataFrame) -> dict[str, dict]:
    return {NAMES[int(r["control"])]: r for r in trials.to_dict("records")}


def _flags(row: dict) -> set[str]:
    return {f for f in str(row["health.flags"]).split(",") if f}


def _assert_controls(rows: dict[str, dict]) -> None:
    normal, masked, stuck = rows["normal"], rows["masked"], rows["stuck"]
    assert (normal["status"], masked["status"], stuck["status"]) == ("completed",) * 3
    # No false alarm on the normal model, whose numbers are measured, not absent.
    assert normal["health.ok"] is True or normal["health.ok"] == 1, _flags(normal)
    assert _flags(normal) == set()
    assert normal[P + "zero_grad_fraction"] == 0.0
    assert normal["health.did_not_learn_loss_ratio"] < 0.8
    assert normal[P + "gradient_free_gap"] <= 0.05
    # The masked model: every input's gradient is exactly zero, and Square, which reads no
    # gradient, breaks digits PGD could not.
    assert not masked["health.ok"]
    assert masked[P + "zero_grad_fraction"] == 1.0
    assert "robustness.pgd.zero_grad_fraction" in _flags(masked)
    assert masked[P + "gradient_free_gap"] > normal[P + "gradient_free_gap"]
    assert "did_not_learn" not in _flags(masked)
    # The stuck run: its final loss sits at ln 10.
    assert not stuck["health.ok"]
    assert "did_not_learn" in _flags(stuck)
    assert abs(stuck["health.did_not_learn_loss_ratio"] - 1) <= 0.1
    assert "robustness.pgd.zero_grad_fraction" not in _flags(stuck)


def _study_file(tmp_path):
    p = tmp_path / "health_controls.yaml"
    p.write_text(STUDY)
    return p


def test_three_controls_without_ray(tmp_path):
    doc = load_study(_study_file(tmp_path))
    assert [t.params["control"] for t in doc.trials] == [0, 1, 2]
    bundle = load(doc.plan.parsed[doc.trials[0].trial_id].cfg.data)
    store = ResultStore(tmp_path / "out", health=doc.spec.health)
    for t in doc.trials:
        trial = {**t.to_ray(), "health": doc.spec.health.model_dump()}
        store.record(trial, "completed", run_trial(trial, bundle))
    rows = _by_control(pd.read_parquet(tmp_path / "out" / "trials.parquet"))
    _assert_controls(rows)
    # The masked control's gradient-free gap is a flag under the defaults; a study that
    # tolerates it (tol 1) re-judges the same values without it, without retraining.
    from raystudy.health import HealthOptions, judge
    loose = HealthOptions.model_validate({"checks": {"gradient_free_gap": {"tol": 1.0}}})
    assert "robustness.pgd.gradient_free_gap" not in judge(rows["masked"], loose)[1]


@pytest.mark.slow
def test_three_controls_through_ray(ray_local, tmp_path, capsys):
    res = tmp_path / "results"
    rc = main(["run", str(_study_file(tmp_path)), "--results", str(res), "--no-dashboard"])
    assert rc == 0
    trials = pd.read_parquet(res / "health_controls" / "trials.parquet")
    assert len(trials) == 3
    _assert_controls(_by_control(trials))
    printed = capsys.readouterr().out
    # The run warns once per unhealthy trial (raystudy.healthview), the masked and the stuck.
    assert printed.count("unhealthy trial") == 2, printed
