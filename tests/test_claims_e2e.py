"""Claims through a real Ray run (issue 16's "done when"): a study whose true claim (training
raises accuracy) is supported and whose false claim (training lowers it) is contradicted, with
exactly those verdicts in claims.parquet, in `raystudy claims` and its --strict exit code."""

from __future__ import annotations

import pandas as pd
import pytest

from raystudy.cli import main

# Untrained (0 epochs) against trained (1 epoch of Adam on 512 synthetic images) networks, three
# seeds: seed pairs give the paired t interval; `within: {seed: 0}` leaves one seed, where the
# per-example outcomes (outcomes.parquet) pair the 300 evaluated images instead.
STUDY = """\
name: claims_e2e
data: {dataset: synthetic, train_size: 512, test_size: 300, val_fraction: 0.0}
model: {arch: stdcnn_mnist, channels: [4, 4, 8, 8], hidden: 16}
train:
  epochs: 1
  batch_size: 16
  optimizer: {name: adam, lr: 0.003}
  method: {name: natural}
  checkpoint_every: 0
space:
  train.epochs: {grid: [0, 1]}
  seed: {grid: [0, 1, 2]}
evaluate:
  - accuracy: {splits: [test]}
resources: {cpu: 1, gpu: 0}
claims:
  - name: training_raises_accuracy
    about: one epoch of Adam beats the untrained network
    compare: {metric: accuracy, a: {train.epochs: 1}, b: {train.epochs: 0}, expect: greater}
  - name: training_lowers_accuracy
    compare: {metric: accuracy, a: {train.epochs: 1}, b: {train.epochs: 0}, expect: less}
  - name: training_raises_accuracy_seed0
    compare: {metric: accuracy, a: {train.epochs: 1}, b: {train.epochs: 0}, within: {seed: 0}, expect: greater}
  - name: accuracy_increases_with_epochs
    trend: {metric: accuracy, over: train.epochs, expect: increasing}
"""


@pytest.mark.slow
def test_true_claim_supported_and_false_claim_contradicted_through_ray(ray_local, tmp_path, capsys):
    f = tmp_path / "claims.yaml"
    f.write_text(STUDY)
    assert main(["run", str(f), "--results", str(tmp_path / "r"), "--no-dashboard"]) == 0
    out = tmp_path / "r" / "claims_e2e"
    printed = capsys.readouterr().out
    assert "raystudy: claims (claims.parquet)" in printed and "training_lowers_accuracy" in printed
    df = pd.read_parquet(out / "claims.parquet").set_index("claim")
    assert df.loc["training_raises_accuracy", "verdict"] == "supported"
    assert df.loc["training_lowers_accuracy", "verdict"] == "contradicted"
    assert df.loc["accuracy_increases_with_epochs", "verdict"] == "supported"
    r = df.loc["training_raises_accuracy"]
    assert (r["unit"], r["n"], r["test"]) == ("seed pairs", 3, "paired t") and 0 < r["lo"] < r["effect"]
    trials = pd.read_parquet(out / "trials.parquet")
    acc = trials.pivot_table(index="seed", columns="train.epochs", values="accuracy")
    assert r["effect"] == pytest.approx((acc[1] - acc[0]).mean())
    one = df.loc["training_raises_accuracy_seed0"]
    if (out / "outcomes.parquet").exists():   # once the per-example outcomes are recorded
        assert (one["verdict"], one["unit"], one["n"]) == ("supported", "examples", 300)
    else:
        assert one["verdict"] == "inconclusive" and "outcomes" in one["note"]
    # `raystudy claims` recomputes the same verdicts; --strict fails on the contradicted one.
    (out / "claims.parquet").unlink()
    assert main(["claims", str(out)]) == 0
    text = capsys.readouterr().out
    assert "✘ contradicted" in text and "✔ supported" in text
    assert pd.read_parquet(out / "claims.parquet").set_index("claim")["verdict"].to_dict() == df["verdict"].to_dict()
    assert main(["claims", str(out), "--strict"]) == 1
    assert "training_lowers_accuracy" in capsys.readouterr().err
