"""The three positive controls of the health checks (issue 15, item 5), each a trial of one
tiny study on the embedded MNIST:

* `normal`: a StdCNN trained with Adam 1e-3: it learns, its PGD profile is sound: no flag;
* `masked`: the same with `model.input_transform: binarize` in front, whose input gradient is
  exactly zero (shattered gradients, Athalye et al. 2018): the masking checks must fire;
* `stuck`: SGD lr 0.05, momentum 0.9, batch 64, which leaves a plain StdCNN at chance
  (PITFALLS): `did_not_learn` must fire.

A check that were a constant could not pass both the normal control and the one meant to
trip it. One test per control runs its trial Ray-free (raystudy.execute.run_trial) and records it
through the results store, where the driver judges it; the last runs the same study through
`raystudy run` on a real local Ray and reads trials.parquet.
"""

from __future__ import annotations

import pandas as pd
import pytest

from raystudy.cli import main
from raystudy.data import load
from raystudy.execute import run_trial
from raystudy.health import HealthOptions, judge
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
  - robustness: {attack: pgd, eps: [0, 0.15, 0.3], n: 40}
health:
  n: 40
  checks: {convergence_gain: {steps_factor: 2, restarts: 1}, gradient_free_gap: {queries: 100}}
resources: {cpu: 1, gpu: 0}
"""
NAMES = {0: "normal", 1: "masked", 2: "stuck"}
P = "health.robustness.pgd."


def _by_control(trials: pd.DataFrame) -> dict[str, dict]:
    return {NAMES[int(r["control"])]: r for r in trials.to_dict("records")}


def _flags(row: dict) -> set[str]:
    return {f for f in str(row["health.flags"]).split(",") if f}


def _normal(row: dict) -> None:
    # No false alarm, and the values are measured, not absent.
    assert row["status"] == "completed"
    assert row["health.ok"], _flags(row)
    assert _flags(row) == set()
    assert row[P + "zero_grad_fraction"] == 0.0
    assert row["health.did_not_learn_loss_ratio"] < 0.8
    assert row[P + "gradient_free_gap"] <= 0.05


def _masked(row: dict) -> None:
    # Every input's gradient is exactly zero, and Square, which reads no gradient, breaks
    # digits PGD left standing.
    assert row["status"] == "completed"
    assert not row["health.ok"]
    assert row[P + "zero_grad_fraction"] == 1.0
    assert "robustness.pgd.zero_grad_fraction" in _flags(row)
    assert row[P + "gradient_free_gap"] > 0
    assert "did_not_learn" not in _flags(row)


def _stuck(row: dict) -> None:
    # Its final training loss sits at ln 10; its gradients are not masked.
    assert row["status"] == "completed"
    assert not row["health.ok"]
    assert "did_not_learn" in _flags(row)
    assert abs(row["health.did_not_learn_loss_ratio"] - 1) <= 0.1
    if P + "zero_grad_fraction" in row:
        assert row[P + "zero_grad_fraction"] == 0.0


CONTROLS = {"normal": _normal, "masked": _masked, "stuck": _stuck}


def _study_file(tmp_path):
    p = tmp_path / "health_controls.yaml"
    p.write_text(STUDY)
    return p


# The stuck control needs no attack (`evaluate: [accuracy]`): seconds, so it runs in the fast
# suite; the other two evaluate the PGD profile with its checks (a minute or more on 2 cores).
SLOW = pytest.mark.slow


@pytest.mark.parametrize("control", [pytest.param(0, marks=SLOW), pytest.param(1, marks=SLOW), 2],
                         ids=[NAMES[i] for i in range(3)])
def test_control_without_ray(tmp_path, control):
    doc = load_study(_study_file(tmp_path), sets=["evaluate=[accuracy]"] if NAMES[control] == "stuck" else None)
    t = doc.trials[control]
    assert t.params["control"] == control
    store = ResultStore(tmp_path / "out", health=doc.spec.health)
    trial = {**t.to_ray(), "health": doc.spec.health.model_dump()}
    store.record(trial, "completed", run_trial(trial, load(doc.plan.parsed[t.trial_id].cfg.data)))
    row, = pd.read_parquet(tmp_path / "out" / "trials.parquet").to_dict("records")
    CONTROLS[NAMES[control]](row)
    if NAMES[control] == "masked":
        # A study that tolerates a zero gradient re-judges the same values without that flag,
        # without retraining.
        loose = HealthOptions.model_validate({"checks": {"zero_grad_fraction": {"tol": 1.0}}})
        assert "robustness.pgd.zero_grad_fraction" not in judge(row, loose)[1]


@pytest.mark.slow
def test_three_controls_through_ray(ray_local, tmp_path, capsys):
    res = tmp_path / "results"
    rc = main(["run", str(_study_file(tmp_path)), "--results", str(res), "--no-dashboard"])
    assert rc == 0
    trials = pd.read_parquet(res / "health_controls" / "trials.parquet")
    assert len(trials) == 3
    for name, row in _by_control(trials).items():
        CONTROLS[name](row)
    printed = capsys.readouterr().out
    # The run warns once per unhealthy trial (raystudy.healthview), the masked and the stuck.
    assert printed.count("unhealthy trial") == 2, printed
