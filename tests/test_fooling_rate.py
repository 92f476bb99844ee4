"""The papers' fooling rate next to the label-attack consistency, and the PGD step-size rule
as data (issue 17, items 7 and 9)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from torch import nn

from raystudy.data import DataInfo, DeviceData

from helpers import run_metric


class Threshold(nn.Module):
    """Two classes on 1x2x2 images: class 1 when pixel 0 is above 0.5 (a linear boundary at
    L2 and L∞ distance |x0 - 0.5| from every input)."""

    def forward(self, x):
        z = 10.0 * (x.flatten(1)[:, :1] - 0.5)
        return torch.cat([torch.zeros_like(z), z], 1)


@pytest.fixture(scope="module")
def toy():
    """Five inputs classified right, far from the boundary (x0 = 0.1, label 0), and five
    misclassified just below it (x0 = 0.45, label 1, predicted 0)."""
    x = torch.full((10, 1, 2, 2), 0.3)
    x[:5, 0, 0, 0], x[5:, 0, 0, 0] = 0.1, 0.45
    y = torch.tensor([0] * 5 + [1] * 5)
    e = torch.empty(0, 1, 2, 2)
    return DeviceData("toy", e, y[:0], e, y[:0], x, y, DataInfo(1, 2, 2, 2, (0.5,), (0.25,)))


def rows(res):
    return {r["x"]: r for r in res.curves}


@pytest.mark.parametrize("attack,hp", [("fgsm", {}), ("pgd", {"steps": 5})])
def test_fooling_rate_attacks_the_models_own_prediction(toy, attack, hp):
    """At ε = 0.1 the label attack pushes the misclassified inputs further into class 0 (their
    prediction stays: consistency 1), while the attack on their own prediction carries them
    across the boundary: the papers' fooling rate is 0.5, which the label attack cannot show."""
    res = run_metric("robustness", Threshold(), toy, attack=attack, eps=[0, 0.1], n=None, acc_at=[], **hp)
    r = rows(res)[0.1]
    assert r["accuracy"] == 0.5 and r["consistency"] == 1.0
    assert r["fooling_rate"] == 0.5 and r["not_fooled"] == 0.5
    assert rows(res)[0.0]["fooling_rate"] == 0.0
    assert res.scalars["robustness." + attack + ".not_fooled_auc"] == pytest.approx(0.75)
    assert res.scalars["robustness." + attack + ".consistency_auc"] == 1.0


def test_minimal_attack_fooling_rate_uses_the_distance_from_the_own_prediction(toy):
    """DeepFool on the label counts a misclassified input as fooled at distance 0 (so it is
    consistent at every ε); on the model's own prediction it is 0.05 from the boundary, the
    correct ones 0.4."""
    res = run_metric("robustness", Threshold(), toy, attack="deepfool", eps=[0, 0.01, 0.1, 1.0], n=None)
    r = rows(res)
    assert [r[e]["consistency"] for e in (0.0, 0.01, 0.1, 1.0)] == [1.0, 1.0, 1.0, 0.5]
    assert [r[e]["fooling_rate"] for e in (0.0, 0.01, 0.1, 1.0)] == [0.0, 0.0, 0.5, 1.0]
    assert [r[e]["accuracy"] for e in (0.0, 0.01, 0.1, 1.0)] == [0.5, 0.5, 0.5, 0.0]


def test_pgd_profile_states_its_step_rule(toy):
    res = run_metric("robustness", Threshold(), toy, attack="pgd", eps=[0, 0.1, 0.2], steps=4, n=None, acc_at=[])
    assert res.notes == {"robustness.pgd.alpha_rule": "2.5*eps/steps"}
    assert [r["alpha"] for r in res.curves] == pytest.approx([0.0, 2.5 * 0.1 / 4, 2.5 * 0.2 / 4])
    assert {r["alpha_rule"] for r in res.curves} == {"2.5*eps/steps"}
    given = run_metric("robustness", Threshold(), toy, attack="pgd", eps=[0, 0.1], steps=4, alpha=0.01,
                       n=None, acc_at=[], name="pgd_fixed")
    assert given.notes == {"robustness.pgd_fixed.alpha_rule": "given"}
    assert [r["alpha"] for r in given.curves] == [0.01, 0.01]
    # Attacks without a step size state none.
    assert run_metric("robustness", Threshold(), toy, attack="fgsm", eps=[0.1], n=None, acc_at=[]).notes == {}
    assert all(isinstance(v, float) for v in res.scalars.values())


def test_step_rule_reaches_the_trials_table(tmp_path):
    """Through a real trial (no Ray): the note is a column of trials.parquet, the step per ε a
    column of curves.parquet, and a metric taken every epoch does not turn it into a curve."""
    from raystudy.data import load
    from raystudy.execute import NullReporter, run_trial
    from raystudy.results import CURVES, TRIALS, ResultStore
    from raystudy.spec.schema import DataSpec
    # every_epochs measures on the validation split
    data = {"dataset": "synthetic", "train_size": 64, "test_size": 32, "val_fraction": 0.25}
    cfg = {"seed": 0, "device": "cpu", "data": data,
           "model": {"arch": "stdcnn_mnist", "channels": [4, 4, 8, 8], "hidden": 16},
           "train": {"epochs": 1, "batch_size": 32, "optimizer": {"name": "adam", "lr": 0.003}},
           "evaluate": [{"robustness": {"attack": "pgd", "eps": [0, 0.1], "steps": 2, "n": 16, "acc_at": [],
                                        "every_epochs": 1}}]}
    trial = {"trial_id": "t", "params": {}, "config": cfg}
    final = run_trial(trial, load(DataSpec(**data)), NullReporter())
    assert final["robustness.pgd.alpha_rule"] == "2.5*eps/steps"
    assert not any("alpha_rule" in r["metric"] for r in json.loads(final["_curves"]))
    ResultStore(tmp_path).record(trial, "completed", final)
    trials, curves = pd.read_parquet(tmp_path / TRIALS), pd.read_parquet(tmp_path / CURVES)
    assert trials["robustness.pgd.alpha_rule"].tolist() == ["2.5*eps/steps"]
    last = curves[curves["metric"] == "robustness.pgd"].sort_values("x")
    assert last["alpha"].tolist() == pytest.approx([0.0, 0.125])
