"""ResultStore rewrites only the tables a trial's record changed, and what it writes is the
same as a full rewrite would give."""

from __future__ import annotations

import json

import pandas as pd

from raystudy.layout import CURVES, EPOCHS, TRIALS
from raystudy.results import ResultStore


def _trial(i: int) -> dict:
    return {"trial_id": f"t{i}", "params": {"seed": i}, "config": {"seed": i}}


def _stamp(out, name):
    p = out / name
    return p.stat().st_mtime_ns, p.stat().st_ino


def test_a_record_rewrites_only_the_tables_it_changed(tmp_path):
    store = ResultStore(tmp_path)
    curve = json.dumps([{"metric": "robustness", "x": 0.0, "accuracy": 0.9}])
    store.record(_trial(0), "completed", {"accuracy": 0.5, "_curves": curve}, epochs=[{"epoch": 1, "loss": 1.0}])
    before = {n: _stamp(tmp_path, n) for n in (TRIALS, CURVES, EPOCHS)}
    # A trial without curves: curves.parquet keeps its file; trials and epochs are rewritten.
    store.record(_trial(1), "error", None, error="boom", epochs=[{"epoch": 1, "loss": 2.0}])
    assert _stamp(tmp_path, CURVES) == before[CURVES]
    assert _stamp(tmp_path, TRIALS) != before[TRIALS]
    assert _stamp(tmp_path, EPOCHS) != before[EPOCHS]
    # Trial 0 recorded again without curves: its curve rows go, so curves.parquet changes.
    store.record(_trial(0), "completed", {"accuracy": 0.6}, epochs=[{"epoch": 1, "loss": 1.0}])
    assert _stamp(tmp_path, CURVES) != before[CURVES]
    assert pd.read_parquet(tmp_path / CURVES).empty
    # What is on disk equals a full rewrite of everything the store holds.
    partial = {n: pd.read_parquet(tmp_path / n) for n in (TRIALS, CURVES, EPOCHS)}
    store.flush()
    for n, df in partial.items():
        pd.testing.assert_frame_equal(df, pd.read_parquet(tmp_path / n))
    assert sorted(partial[TRIALS]["trial_id"]) == ["t0", "t1"]
    assert partial[TRIALS].set_index("trial_id").loc["t0", "runs"] == 2
