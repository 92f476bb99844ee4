"""Per-example outcomes from the metric template (every registered metric is checked by
tests/test_contracts.py through helpers.assert_uncertainty_contract): the `examples` key names
exactly the images evaluated; outcomes.parquet round-trips, and a paired comparison of two
recorded trials gives the same differences as their curve rows and scalars."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from test_contracts import run_metric, syn, trained  # noqa: F401 - fixtures

from analysis.paired import compare, load_outcomes, paired_bootstrap
from raystudy.results import OUTCOME_COLUMNS
from raystudy.stats import unpack


def test_outcomes_name_the_images_exactly(trained, syn):  # noqa: F811
    from test_contracts import tiny_cnn
    other = tiny_cnn(seed=1).eval()

    def key(model, **o):
        return run_metric("accuracy", model, syn, **o).outcomes[0]["examples"]

    base = key(trained, split="test", n=20)
    assert key(other, split="test", n=20) == base                   # two models, the same images
    assert key(trained, split="test", n=21) != base                 # n
    assert key(trained, split="test", n=20, seed=1) != base         # the subset's seed
    assert key(trained, split="train", n=20) != base                # the split
    # The whole split has one key whatever the seed (the same images in the same order).
    assert key(trained, split="test") == key(trained, split="test", seed=5)
    rob = run_metric("robustness", trained, syn, attack="fgsm", eps=[0], acc_at=[], n=20).outcomes
    assert rob[0]["examples"] == base


def _cfg(seed: int, epochs: int) -> dict:
    return {"seed": seed, "device": "cpu",
            "data": {"dataset": "synthetic", "train_size": 128, "test_size": 64, "val_fraction": 0.0},
            "model": {"arch": "stdcnn_mnist", "channels": [4, 4, 8, 8], "hidden": 16},
            "train": {"epochs": epochs, "batch_size": 16, "optimizer": {"name": "adam", "lr": 0.01}},
            "evaluate": ["accuracy", {"robustness": {"attack": "fgsm", "eps": [0, 0.05, 0.1, 0.2], "acc_at": [],
                                                     "n": 48}}]}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    from helpers import record_trials
    out = tmp_path_factory.mktemp("recorded") / "study"
    return record_trials(out, {"trained": _cfg(0, 3), "untrained": _cfg(1, 0)})


def test_outcomes_parquet_round_trips_what_the_metrics_measured(recorded):
    oc = load_outcomes(recorded)
    assert list(oc.columns) == OUTCOME_COLUMNS
    assert sorted(set(oc["metric"])) == ["accuracy", "robustness.pgd"] or \
        sorted(set(oc["metric"])) == ["accuracy", "robustness.fgsm"]
    curves = pd.read_parquet(recorded / "curves.parquet")
    assert {"n", "accuracy_lo", "accuracy_hi", "consistency_lo", "consistency_hi"} <= set(curves.columns)
    for r in oc.itertuples():
        assert r.n == (64 if r.metric == "accuracy" else 48)
        assert len(r.correct) == (r.n + 7) // 8
        assert (r.consistent is None) == (r.metric == "accuracy")
        if r.metric != "accuracy":
            c = curves[(curves.trial_id == r.trial_id) & (curves.metric == r.metric) & np.isclose(curves.x, r.x)]
            assert unpack(r.correct, r.n).mean() == pytest.approx(c["accuracy"].item(), abs=1e-7)
            assert unpack(r.consistent, r.n).mean() == pytest.approx(c["consistency"].item(), abs=1e-7)
    # The two trials of one study (different seeds, different training) saw the same images.
    assert oc.groupby("metric")["examples"].nunique().eq(1).all()


def test_paired_comparison_of_recorded_trials_agrees_with_their_curves(recorded):
    curves = pd.read_parquet(recorded / "curves.parquet")
    trials = pd.read_parquet(recorded / "trials.parquet").set_index("trial_id")
    for x in (0.0, 0.05, 0.1, 0.2):
        at = curves[np.isclose(curves.x, x)].set_index("trial_id")["accuracy"]
        r = compare(recorded, "trained", "untrained", "robustness.fgsm", x=x)
        assert r["effect"] == pytest.approx(at["trained"] - at["untrained"], abs=1e-7)
        assert r["n"] == 48 and r["test"] == "mcnemar_exact" and r["lo"] <= r["effect"] <= r["hi"]
    clean = compare(recorded, "trained", "untrained", "accuracy", x=0)
    assert clean["effect"] == pytest.approx(trials.loc["trained", "accuracy"] - trials.loc["untrained", "accuracy"])
    # Three epochs of Adam against chance on the quadrant task: unmistakable on 64 images.
    assert clean["effect"] > 0.3 and clean["p"] < 1e-6
    auc = compare(recorded, "trained", "untrained", "robustness.fgsm", n_boot=500)
    want = trials.loc["trained", "robustness.fgsm.auc"] - trials.loc["untrained", "robustness.fgsm.auc"]
    assert auc["test"] == "paired_bootstrap" and auc["effect"] == pytest.approx(want, abs=1e-7)
    assert auc["lo"] <= auc["effect"] <= auc["hi"]
    cons = compare(recorded, "trained", "untrained", "robustness.fgsm", column="consistent", stat="mean", n_boot=50)
    mean_con = curves.groupby("trial_id")["consistency"].mean()
    assert cons["effect"] == pytest.approx(mean_con["trained"] - mean_con["untrained"], abs=1e-7)
    with pytest.raises(ValueError, match="no outcomes"):
        compare(recorded, "trained", "untrained", "robustness.fgsm", x=0.3)


def test_rows_of_different_images_cannot_be_paired(recorded):
    oc = load_outcomes(recorded)
    a = oc[(oc.trial_id == "trained") & (oc.metric == "robustness.fgsm")]
    b = oc[(oc.trial_id == "untrained") & (oc.metric == "robustness.fgsm")].assign(examples="0" * 16)
    with pytest.raises(ValueError, match="same images"):
        paired_bootstrap(a, b, n_boot=10)
    assert math.isfinite(paired_bootstrap(a, a, n_boot=10)["effect"])
