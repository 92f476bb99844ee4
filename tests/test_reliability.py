"""Fault injection with a real local Ray: worker death, Ctrl-C, driver crash, divergence.

Faults come from the test-only RAYSTUDY_FAULT hook (faults.parse_faults): the
worker SIGKILLs itself, raises, or the driver sends itself SIGINT / SIGKILL at a
given epoch. Every assertion is about what survived: epoch counts, run counts,
resume points, and that a resumed trial computes exactly what an uninterrupted
one computes.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from raystudy.cli import main
from raystudy.errors import StudyError
from raystudy.results import EPOCHS, PLAN, TRIALS
from raystudy.basecheck import check_base
from raystudy.runner import run_study
from raystudy.spec import load_study

ROOT = Path(__file__).resolve().parents[1]


def study_file(tmp_path, name, *, epochs=3, space="seed: {grid: [0]}", extra="", lr=0.05):
    text = f"""
name: {name}
data: {{dataset: synthetic, train_size: 128, test_size: 64}}
model: {{arch: stdcnn_mnist, channels: [4, 4, 8, 8], hidden: 16}}
train:
  epochs: {epochs}
  batch_size: 32
  optimizer: {{name: sgd, lr: {lr}, momentum: 0.9}}
space:
  {space}
evaluate: [accuracy]
resources: {{cpu: 1}}
{extra}
"""
    p = tmp_path / f"{name}.yaml"
    p.write_text(text)
    return p


def recorded(out: Path, study, trials) -> Path:
    """A results folder as a run of `study` leaves it, with `trials` completed (no Ray)."""
    from raystudy.results import ResultStore, write_json_atomic
    from raystudy.basecheck import plan_record
    out.mkdir(parents=True)
    write_json_atomic(plan_record(study), out / PLAN)
    for t in trials:
        ResultStore(out).record(t.to_ray(), "completed", {"accuracy": 0.5})
    return out


def tables(out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    return pd.read_parquet(out / TRIALS).set_index("trial_id"), pd.read_parquet(out / EPOCHS)


def reference_losses(trial) -> list[float]:
    """The same trial trained without Ray and without interruption."""
    from raystudy.data import load
    from raystudy.execute import NullReporter, run_trial
    from raystudy.spec.schema import DataSpec
    rep = NullReporter()
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the trial's worker (resources.cpu = 1)
    try:
        run_trial(trial.to_ray(), load(DataSpec.model_validate(trial.config["data"])), rep)
    finally:
        torch.set_num_threads(n)
    return [e["loss"] for e in rep.epochs]


@pytest.mark.slow   # real Ray trials
def test_killed_worker_resumes_from_its_checkpoint(ray_local, tmp_path, monkeypatch):
    f = study_file(tmp_path, "kill", epochs=3, extra="tune: {retries: 1}")
    monkeypatch.setenv("RAYSTUDY_FAULT", "kill@2")  # SIGKILL after training epoch 2, before reporting it
    study = load_study(f)
    s = run_study(study, tmp_path / "res", dashboard=False, verbose=False)
    assert (s.completed, s.failed) == (1, 0)
    trials, epochs = tables(s.out)
    row = trials.loc[study.trials[0].trial_id]
    assert row["status"] == "completed"
    # Resumed from the epoch-1 checkpoint, not restarted: epoch 1 reported once by the first
    # worker, epochs 2 and 3 by the second; a restart from scratch would report 1 + 3.
    assert row["resumed_from_epoch"] == 1
    assert row["epoch_reports"] == 3
    assert row["epochs_run"] == 3
    assert epochs["epoch"].tolist() == [1, 2, 3]
    # Bit-for-bit the same training as an uninterrupted run: model, optimizer (momentum),
    # schedule and the data-order RNG all came back from the checkpoint.
    ref = reference_losses(study.trials[0])
    assert epochs["loss"].tolist() == pytest.approx(ref, rel=1e-6, abs=1e-7)
    # Stored relative to the results folder (portable results), resolved against it.
    assert not Path(row["checkpoint"]).is_absolute()
    ck = s.out / row["checkpoint"]
    assert (ck / "model.pt").is_file()
    state = torch.load(ck / "model.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state.values())


@pytest.mark.slow   # real Ray trials
def test_failures_are_recorded_and_the_study_goes_on(ray_local, tmp_path, monkeypatch, capsys):
    # One healthy trial, one that really diverges (lr 1e30), and injected crashes; no retries.
    space = ("case: {grid: [ok, nan, kill, raise, oom]}\n"
             "  train.optimizer.lr: {expr: \"1.0e+30 if case == 'nan' else 0.05\"}")
    f = study_file(tmp_path, "faults", epochs=2, space=space, extra="tune: {retries: 0, max_concurrent: 2}")
    monkeypatch.setenv("RAYSTUDY_FAULT", "kill@1:case=kill,raise@1:case=raise,oom@1:case=oom")
    rc = main(["run", str(f), "--results", str(tmp_path / "res"), "--no-dashboard"])
    out = capsys.readouterr()
    assert rc == 0
    trials = pd.read_parquet(tmp_path / "res" / "faults" / TRIALS).set_index("case")
    assert trials.loc["ok", "status"] == "completed" and trials.loc["ok", "accuracy"] > 0.25
    ck = trials.loc["ok", "checkpoint"]
    assert ck and Path(tmp_path / "res" / "faults", ck, "model.pt").is_file()
    for case in ("nan", "kill", "raise", "oom"):
        assert trials.loc[case, "status"] == "error", case
        assert "\n" not in trials.loc[case, "error"] and pd.isna(trials.loc[case, "checkpoint"])
    assert trials.loc["nan", "error"].startswith("NonFiniteLoss: loss became nan in epoch 1")
    assert trials.loc["raise", "error"] == "RuntimeError: injected fault after epoch 1"
    assert "OutOfMemoryError" in trials.loc["oom", "error"] and "batch_size" in trials.loc["oom", "error"]
    assert "died" in trials.loc["kill", "error"].lower() or "exit" in trials.loc["kill", "error"].lower()
    # The end summary lists every failure with its reason; Ray's own noise is gone.
    assert "1/5 trials completed, 4 failed" in out.out
    for tid in trials.loc[["nan", "kill", "raise", "oom"], "trial_id"]:
        assert f"failed {tid}: " in out.out
    for noise in ("Configuration for experiment", "Checkpoint successfully created", "View detailed results",
                  "Traceback"):
        assert noise not in out.out + out.err
    assert "FAILED: RuntimeError: injected fault after epoch 1; full trace in " in out.out
    # A re-run skips all of them; --retry-failed would run the four again.
    s = run_study(load_study(f), tmp_path / "res", dashboard=False, verbose=False)
    assert (s.completed, s.failed, s.skipped) == (1, 4, 5)


def _interrupted_run_then_resume(tmp_path, name, first_run):
    f = study_file(tmp_path, name, epochs=4, space="seed: {grid: [0, 1, 2]}",
                   extra="tune: {max_concurrent: 1}")
    study = load_study(f)
    out = tmp_path / "res" / name
    first_run(f)
    before = pd.read_parquet(out / TRIALS).set_index("trial_id")
    assert (before["status"] == "completed").sum() >= 1 and (before["status"] == "error").sum() == 0
    assert len(before) < 3
    s = run_study(study, tmp_path / "res", dashboard=False, verbose=False)
    assert (s.completed, s.failed, s.skipped) == (3, 0, len(before))
    after, epochs = tables(out)
    # Finished trials were not re-run: same rows, run count 1.
    assert (after["runs"] == 1).all()
    for tid in before.index:
        assert after.loc[tid, "accuracy"] == before.loc[tid, "accuracy"]
    # The trial cut off mid-way continued from its last checkpoint of the first run.
    new = after.drop(index=before.index)
    resumed = new[new["resumed_from_epoch"] > 0]
    assert len(resumed) == 1
    r = resumed.iloc[0]
    assert 2 <= r["resumed_from_epoch"] < 4
    assert r["epoch_reports"] == 4 - r["resumed_from_epoch"]
    # Its epoch table is whole (the history travels in the checkpoint) and matches an
    # uninterrupted run of the same config.
    e = epochs[epochs["trial_id"] == resumed.index[0]]
    assert e["epoch"].tolist() == [1, 2, 3, 4]
    trial = next(t for t in study.trials if t.trial_id == resumed.index[0])
    assert e["loss"].tolist() == pytest.approx(reference_losses(trial), rel=1e-6, abs=1e-7)
    return after


@pytest.mark.slow   # real Ray trials
def test_ctrl_c_loses_no_finished_trial_and_resumes(ray_local, tmp_path, monkeypatch, capsys):
    def first(f):
        # The driver gets a real SIGINT while the second trial is at epoch 2.
        monkeypatch.setenv("RAYSTUDY_FAULT", "driver-sigint@2")
        rc = main(["run", str(f), "--results", str(tmp_path / "res"), "--no-dashboard"])
        err = capsys.readouterr().err
        assert rc == 130
        assert "interrupted" in err and "resume with the same command: raystudy run" in err
        monkeypatch.delenv("RAYSTUDY_FAULT")

    _interrupted_run_then_resume(tmp_path, "ctrlc", first)


@pytest.mark.slow   # real Ray trials
def test_driver_crash_loses_no_finished_trial_and_resumes(ray_local, tmp_path):
    address = ray_local.get_runtime_context().gcs_address

    def first(f):
        # A second driver on the same cluster, SIGKILLed (no cleanup at all) mid-study.
        env = dict(os.environ, RAYSTUDY_FAULT="driver-sigkill@2")
        p = subprocess.run([sys.executable, "-m", "raystudy.cli", "run", str(f), "--results",
                            str(tmp_path / "res"), "--address", address, "--no-dashboard"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
        assert p.returncode == -9, p.stdout + p.stderr

    _interrupted_run_then_resume(tmp_path, "crash", first)


@pytest.mark.slow   # real Ray trials
def test_wider_grid_adds_only_new_trials_and_collect_rebuilds(ray_local, tmp_path):
    res = tmp_path / "res"
    f = study_file(tmp_path, "grow", epochs=1, space="seed: {grid: [0]}")
    s1 = run_study(load_study(f), res, dashboard=False, verbose=False)
    assert (s1.completed, s1.skipped) == (1, 0)
    f = study_file(tmp_path, "grow", epochs=1, space="seed: {grid: [0, 1, 2]}")
    s2 = run_study(load_study(f), res, dashboard=False, verbose=False)
    assert (s2.completed, s2.skipped) == (3, 1)
    trials, epochs = tables(s2.out)
    assert sorted(trials["seed"]) == [0, 1, 2] and (trials["runs"] == 1).all()
    assert len(list(s2.out.glob("tune-*"))) == 2
    # Tables lost: `raystudy collect` rebuilds them from the two Tune experiments.
    for t in (TRIALS, EPOCHS, "curves.parquet"):
        (s2.out / t).unlink()
    assert main(["collect", str(s2.out)]) == 0
    again, epochs2 = tables(s2.out)
    assert sorted(again.index) == sorted(trials.index)
    for col in ("status", "accuracy", "epochs_run", "checkpoint", "runs", "seed"):
        assert again.loc[trials.index, col].tolist() == trials[col].tolist(), col
    assert len(epochs2) == len(epochs) == 3


def test_changed_base_is_refused_with_a_diff_and_force_new_moves_it_aside(tmp_path, capsys):
    # No Ray needed: the check runs before anything starts.
    res = tmp_path / "res"
    f = study_file(tmp_path, "base", epochs=1, space="seed: {grid: [0, 1]}")
    study = load_study(f)
    out = recorded(res / "base", study, study.trials[:1])
    # Same base, wider grid or different seeds: accepted.
    wider = load_study(study_file(tmp_path, "base", epochs=1, space="seed: {grid: [0, 1, 2, 3]}"))
    assert check_base(wider, out, force_new=False) is None
    # Changed base: refused, naming the path and showing old -> new.
    f2 = study_file(tmp_path, "base", epochs=2, space="seed: {grid: [0, 1]}", lr=0.1)
    rc = main(["run", str(f2), "--results", str(res), "--no-dashboard"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "train.epochs: 1 -> 2" in err and "train.optimizer.lr: 0.05 -> 0.1" in err
    assert "--force-new" in err and "Traceback" not in err
    assert (out / TRIALS).exists()
    # --force-new keeps the old folder under another name and starts empty.
    moved = check_base(load_study(f2), out, force_new=True)
    assert moved is not None and moved.name.startswith("base.old-")
    assert (moved / TRIALS).exists() and not out.exists()
    assert json.loads((moved / PLAN).read_text())["base_fingerprint"]["train.epochs"] == 1


def test_pinning_a_varied_path_with_set_reuses_the_results(tmp_path):
    # `--set` on a varied path pins the axis: a subset of the same study, not a new base.
    res = tmp_path / "res"
    f = study_file(tmp_path, "pin", epochs=1, space="seed: {grid: [0]}\n  train.optimizer.lr: {grid: [0.05, 0.1]}")
    study = load_study(f)
    out = recorded(res / "pin", study, study.trials)
    pinned = load_study(f, sets=["train.optimizer.lr=0.1"])
    assert len(pinned.trials) == 1 and pinned.trials[0].trial_id in {t.trial_id for t in study.trials}
    assert check_base(pinned, out, force_new=False) is None
    # ... also when the folder was made by the pinned run and the full axis runs next.
    out2 = recorded(res / "pin2", pinned, pinned.trials)
    assert check_base(study, out2, force_new=False) is None
    # A plan written before `varied` was recorded: the trials' params say what varied.
    plan = json.loads((out / PLAN).read_text())
    del plan["varied"]
    (out / PLAN).write_text(json.dumps(plan))
    assert check_base(pinned, out, force_new=False) is None
    # ... but a params entry with a single value (a constant mapping) is not an axis there.
    from raystudy.basecheck import _varied_in
    assert _varied_in([{"params": {"a": 1, "m": {"x": 1}}}, {"params": {"a": 2, "m": {"x": 1}}}]) == {"a"}
    # Pinning a path the study never varied is still a change of the base.
    with pytest.raises(StudyError) as e:
        check_base(load_study(f, sets=["train.epochs=2"]), out, force_new=False)
    assert "train.epochs: 1 -> 2" in str(e.value) and "train.optimizer.lr" not in str(e.value)


def test_checkpoints_load_as_data_only(tmp_path):
    """weights_only=True: a checkpoint that would run code when unpickled is refused."""
    from raystudy.trainable import load_state

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    bad = tmp_path / "state.pt"
    with open(bad, "wb") as fh:
        pickle.dump({"model": Evil()}, fh, protocol=2)
    with pytest.raises(pickle.UnpicklingError):
        load_state(bad)
    assert not marker.exists()
    good = tmp_path / "ok.pt"
    torch.save({"model": {"w": torch.ones(2)}, "fit": {"epoch": 3}}, good)
    assert load_state(good)["fit"]["epoch"] == 3
    # Every torch.load in the package passes weights_only=True.
    for src in (ROOT / "raystudy").rglob("*.py"):
        for line in src.read_text().splitlines():
            if "torch.load(" in line:
                assert "weights_only=True" in line, f"{src}: {line.strip()}"
