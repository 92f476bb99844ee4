"""Reused workers (issue 20 item 1): a trial run in a worker that ran other trials before must
compute exactly what it computes in a fresh worker.

Without Ray: a trial that leaves process-wide state behind (faults.leak_process_state) changes
the next trial run in the same process, unless raystudy.isolation resets the process first.
With a real local Ray (slow): the same trials, with random augmentation in training and
random PGD starts at evaluation, run in fresh workers and in
one reused worker after a leaking trial give bit-identical epoch losses, metrics and curves.
"""

from __future__ import annotations

import gc
import os
import random
import weakref

import numpy as np
import pandas as pd
import pytest
import torch

from raystudy.data import load
from raystudy.execute import NullReporter, run_trial
from raystudy.faults import LEAK_ENV, leak_process_state
from raystudy.isolation import SETTINGS, fresh_trial, reset_process_state, snapshot
from raystudy.spec.load import load_document
from raystudy.spec.schema import DataSpec

DOC = {
    "name": "iso",
    "data": {"dataset": "synthetic", "train_size": 96, "test_size": 48},
    "model": {"arch": "stdcnn_mnist", "channels": [4, 4, 8, 8], "hidden": 16},
    "train": {"epochs": 2, "batch_size": 32, "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
              "augment": {"rotation": 30, "translation": 2}},
    "evaluate": ["accuracy", {"robustness": {"attack": "pgd", "eps": [0, 0.1], "steps": 3}}],
    "space": {"seed": {"grid": [0, 1]}, "train.optimizer.lr": {"grid": [0.05, 0.1]}},
    "resources": {"cpu": 1},
}


def _outcome(trial, bundle) -> tuple[list, dict]:
    torch.set_num_threads(1)   # as the trainable does for resources.cpu = 1
    rep = NullReporter()
    final = run_trial(trial.to_ray(), bundle, rep)
    keep = {k: v for k, v in final.items() if not k.startswith("time.") and not k.endswith("_time_s")}
    return [e["loss"] for e in rep.epochs], keep


@pytest.fixture
def clean_process():
    before = snapshot()
    yield
    torch.set_default_dtype(torch.float32)
    reset_process_state(0)
    os.environ.pop(LEAK_ENV, None)
    assert snapshot() == before
    gc.unfreeze()   # the reset froze the test process's objects: give them back to the collector


class _Node:
    other: object = None


def test_reset_frees_the_previous_trials_cycles_and_freezes_the_rest(clean_process):
    """What a trial leaves in reference cycles is freed at the next reset (as a fresh worker
    would not hold it); what survives is frozen, so the following reset does not scan it."""
    was = gc.isenabled()
    gc.disable()   # only the reset may collect here
    try:
        reset_process_state(0)
        frozen = gc.get_freeze_count()
        assert frozen > 0
        a, b = _Node(), _Node()
        a.other, b.other = b, a
        dead = weakref.ref(a)
        kept = [_Node()]
        del a, b
        assert dead() is not None
        reset_process_state(1)
        assert dead() is None
        assert gc.get_freeze_count() > frozen   # `kept` and its list joined the frozen objects
        assert kept[0] is not None
    finally:
        if was:
            gc.enable()


def test_leaked_state_changes_the_next_trial_unless_reset(clean_process):
    study = load_document(DOC)
    trial = study.trials[1]
    bundle = load(DataSpec.model_validate(trial.config["data"]))
    with fresh_trial(trial.config["seed"]):
        want = _outcome(trial, bundle)
    # A trial leaves its state behind; the next one runs without the reset...
    leak_process_state()
    try:
        got = _outcome(trial, bundle)
    except RuntimeError as e:      # e.g. a float64 model meeting float32 data
        got = ("raised", str(e))
    assert got != want
    # ...and with it: exactly the fresh result.
    leak_process_state()
    with fresh_trial(trial.config["seed"]) as restored:
        again = _outcome(trial, bundle)
    assert again == want
    assert {"default_dtype", "deterministic", "mkldnn.enabled"} <= set(restored)


def test_reset_restores_every_setting_and_reseeds(clean_process):
    base = snapshot()
    torch.backends.cudnn.benchmark = not torch.backends.cudnn.benchmark
    torch.backends.mkldnn.matmul.fp32_precision = "bf16"
    torch.autograd.set_detect_anomaly(True)
    torch.set_default_device("meta")
    leak_process_state()
    assert snapshot() != base
    restored = reset_process_state(7)
    assert snapshot() == base
    assert {"cudnn.benchmark", "mkldnn.matmul.fp32_precision", "anomaly", "default_device"} <= set(restored)
    # The legacy precision getter still works after the per-backend settings were put back.
    assert torch.get_float32_matmul_precision() in ("highest", "high", "medium")
    assert torch.empty(1).device.type == "cpu"
    draws = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(7)
    np.random.seed(7)
    random.seed(7)
    assert torch.equal(draws[0], torch.rand(3)) and np.array_equal(draws[1], np.random.rand(3))
    assert draws[2] == random.random()
    assert len(SETTINGS) == len(base)


def test_environment_is_restored_after_the_trial(clean_process):
    os.environ["RAYSTUDY_ISO_KEEP"] = "a"
    try:
        with fresh_trial(0):
            os.environ[LEAK_ENV] = "1"
            os.environ["RAYSTUDY_ISO_KEEP"] = "b"
        assert LEAK_ENV not in os.environ and os.environ["RAYSTUDY_ISO_KEEP"] == "a"
        with pytest.raises(ValueError):
            with fresh_trial(0):
                del os.environ["RAYSTUDY_ISO_KEEP"]
                raise ValueError("a trial that fails")
        assert os.environ["RAYSTUDY_ISO_KEEP"] == "a"
    finally:
        os.environ.pop("RAYSTUDY_ISO_KEEP", None)


def _run(tmp_path, reuse: bool, monkeypatch):
    from raystudy.results import CURVES, EPOCHS, TRIALS
    from raystudy.runner import run_study
    monkeypatch.setenv("RAYSTUDY_FAULT", "leak@0:seed=0")
    doc = dict(DOC, tune={"reuse_workers": reuse, "max_concurrent": 1})
    study = load_document(doc)
    out = tmp_path / ("reused" if reuse else "fresh")
    summary = run_study(study, out, dashboard=False, verbose=False)
    assert summary.completed == len(study.trials) == 4
    d = out / study.name
    trials = pd.read_parquet(d / TRIALS).set_index("trial_id").sort_index()
    epochs = pd.read_parquet(d / EPOCHS).sort_values(["trial_id", "epoch"])
    curves = pd.read_parquet(d / CURVES).sort_values(["trial_id", "metric", "x"])
    return trials, epochs, curves


@pytest.mark.slow
def test_reused_workers_compute_exactly_what_fresh_workers_compute(ray_local, tmp_path, monkeypatch):
    fresh = _run(tmp_path, False, monkeypatch)
    reused = _run(tmp_path, True, monkeypatch)
    ft, fe, fc = fresh
    rt, re_, rc = reused
    # One worker ran all four trials in turn (the first one leaking), versus one each.
    assert rt["worker_pid"].nunique() == 1 and ft["worker_pid"].nunique() == 4
    cols = ["final_loss", "accuracy", "robustness.pgd.auc"] + [c for c in ft if c.startswith("robustness.pgd.acc")]
    pd.testing.assert_frame_equal(ft[cols], rt[cols], check_exact=True)
    pd.testing.assert_series_equal(fe["loss"].reset_index(drop=True), re_["loss"].reset_index(drop=True),
                                   check_exact=True)
    num = [c for c in fc if fc[c].dtype.kind == "f"]
    pd.testing.assert_frame_equal(fc[num].reset_index(drop=True), rc[num].reset_index(drop=True), check_exact=True)
