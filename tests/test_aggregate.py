"""Seed aggregation: closed-form statistics and the CI's coverage."""

import math

import numpy as np
import pandas as pd
import pytest

from analysis.aggregate import aggregate, band, summarize

T_975_2 = 4.302652729911275  # Student t quantile 0.975 with 2 degrees of freedom


def test_summarize_closed_form():
    s = summarize([1.0, 2.0, 3.0])
    assert s["n"] == 3 and s["mean"] == 2.0 and s["std"] == pytest.approx(1.0)
    assert s["sem"] == pytest.approx(1 / math.sqrt(3))
    assert s["ci_high"] - s["mean"] == pytest.approx(T_975_2 / math.sqrt(3))
    assert s["mean"] - s["ci_low"] == pytest.approx(T_975_2 / math.sqrt(3))


def test_single_seed_and_nan_handling():
    one = summarize([0.7])
    assert one["n"] == 1 and one["mean"] == 0.7 and math.isnan(one["std"]) and math.isnan(one["ci_low"])
    s = summarize([0.5, float("nan"), 0.7])
    assert s["n"] == 2 and s["mean"] == pytest.approx(0.6)
    assert summarize([])["n"] == 0


def test_aggregate_groups_by_config_and_values():
    df = pd.DataFrame({"lr_rule": ["fixed"] * 3 + ["ratio"] * 3, "bs": [32, 32, 64, 32, 64, 64],
                       "seed": [0, 1, 0, 0, 0, 1], "acc": [0.9, 0.8, 0.7, 0.6, 0.5, np.nan],
                       "top1": [1, 3, 5, 7, 9, 11]})
    agg = aggregate(df, ["lr_rule", "bs"], ["acc", "top1"])
    assert list(agg.columns) == ["lr_rule", "bs", "value", "n", "mean", "std", "sem", "ci_low", "ci_high"]
    row = agg[(agg.lr_rule == "fixed") & (agg.bs == 32) & (agg.value == "acc")].iloc[0]
    assert row["n"] == 2 and row["mean"] == pytest.approx(0.85) and row["std"] == pytest.approx(math.sqrt(0.005))
    nan_row = agg[(agg.lr_rule == "ratio") & (agg.bs == 64) & (agg.value == "acc")].iloc[0]
    assert nan_row["n"] == 1 and nan_row["mean"] == 0.5
    top = agg[(agg.lr_rule == "ratio") & (agg.bs == 64) & (agg.value == "top1")].iloc[0]
    assert top["n"] == 2 and top["mean"] == 10
    # Groups keep first-seen order; by=None pools everything.
    assert agg[agg.value == "acc"][["lr_rule", "bs"]].values.tolist() == [["fixed", 32], ["fixed", 64],
                                                                           ["ratio", 32], ["ratio", 64]]
    assert aggregate(df, None, "top1")["mean"].item() == 6
    with pytest.raises(KeyError, match="nope"):
        aggregate(df, ["nope"], "acc")


def test_missing_group_keys_form_their_own_group():
    df = pd.DataFrame({"k": ["a", None, "a", None], "v": [1.0, 2.0, 3.0, 4.0]})
    agg = aggregate(df, "k", "v")
    assert len(agg) == 2 and sorted(agg["mean"]) == [2.0, 3.0]


def test_band_kinds():
    agg = aggregate(pd.DataFrame({"v": [1.0, 2.0, 3.0]}), None, "v")
    assert band(agg, "std")[["lo", "hi"]].values.tolist() == [[1.0, 3.0]]
    assert band(agg, "ci")["hi"].item() == pytest.approx(agg["ci_high"].item())
    with pytest.raises(ValueError):
        band(agg, "minmax")


def test_ci_covers_the_true_mean_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    reps, n = 4000, 3
    x = rng.normal(10.0, 2.0, size=(reps, n))
    hits = 0
    for row in x:
        s = summarize(row)
        hits += s["ci_low"] <= 10.0 <= s["ci_high"]
    # Binomial sd at p=0.95 over 4000 reps is 0.0034: 0.935..0.965 is > 4 sd either side.
    assert 0.935 < hits / reps < 0.965
