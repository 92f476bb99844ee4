"""One study end to end through a real local Ray Tune: tables have one row per trial."""

import pandas as pd

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
    epochs = pd.read_parquet(out / "epochs.parquet")
    assert len(epochs) == 4 and set(epochs["augment.rotation"]) == {0.0, 60.0}
    assert (out / "curves.parquet").exists() and (out / "study.json").exists()
    printed = capsys.readouterr().out
    assert "4/4 trials completed" in printed

    # Running it again resumes: nothing is re-run.
    assert main(["run", "studies/quickstart.yaml", "--smoke", "--results", str(res), "--no-dashboard"]) == 0
    again = pd.read_parquet(out / "trials.parquet")
    assert (again["runs"] == 1).all()
    assert main(["status", str(out)]) == 0
    assert "4 completed" in capsys.readouterr().out
