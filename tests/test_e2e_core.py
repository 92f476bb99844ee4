"""One study end to end through a real local Ray Tune: tables have one row per trial."""

import pandas as pd
import pytest

from raystudy.cli import main


def test_quickstart_smoke_through_ray(ray_local, tmp_path, capsys):
    res = tmp_path / "results"
    rc = main(["run", "studies/quickstart.yaml", "--smoke", "--results", str(res), "--no-dashboard"])
    assert rc == 0
    out = res / "quickstart"
    trials = pd.read_parquet(out / "trials.parquet")
    assert len(trials) == 4 and trials["trial_id"].is_unique
    assert (trials["status"] == "completed").all()
    assert set(trials["train.augment.rotation"]) == {0, 60} and set(trials["seed"]) == {0, 1}
    assert trials["accuracy"].between(0, 1).all() and (trials["epochs_run"] == 1).all()
    assert (trials["model.arch"] == "stdcnn_mnist").all()
    from helpers import assert_health_recorded
    assert_health_recorded(trials)
    epochs = pd.read_parquet(out / "epochs.parquet")
    assert len(epochs) == 4 and set(epochs["augment.rotation"]) == {0.0, 60.0}
    assert (out / "curves.parquet").exists() and (out / "study.json").exists()
    printed = capsys.readouterr().out
    assert "4/4 trials completed" in printed
    _outcomes_reached_the_driver(out, trials)

    # Running it again resumes: nothing is re-run.
    assert main(["run", "studies/quickstart.yaml", "--smoke", "--results", str(res), "--no-dashboard"]) == 0
    again = pd.read_parquet(out / "trials.parquet")
    assert (again["runs"] == 1).all()
    assert main(["status", str(out)]) == 0
    assert "4 completed" in capsys.readouterr().out


def _outcomes_reached_the_driver(out, trials):
    """Per-example outcomes travel from the workers in the final result: one row per trial and
    accuracy split, on the same images in every trial, and `raystudy collect` rebuilds them."""
    from analysis.paired import compare, load_outcomes
    oc = load_outcomes(out)
    assert len(oc) == 8 and set(oc["metric"]) == {"accuracy", "accuracy.val"}
    assert oc.groupby("metric")["examples"].nunique().eq(1).all()
    assert set(oc.loc[oc["metric"] == "accuracy", "n"]) == {128}
    a, b = trials["trial_id"].iloc[0], trials["trial_id"].iloc[1]
    acc = trials.set_index("trial_id")["accuracy"]
    assert compare(out, a, b, "accuracy", x=0)["effect"] == pytest.approx(acc[a] - acc[b], abs=1e-7)
    assert main(["collect", str(out)]) == 0
    again = load_outcomes(out)
    key = ["trial_id", "metric"]
    pd.testing.assert_frame_equal(again.sort_values(key).reset_index(drop=True),
                                  oc.sort_values(key).reset_index(drop=True))
