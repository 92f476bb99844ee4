"""Portable results: checkpoint paths are stored relative to the results folder, so a folder
that is moved, copied or mounted elsewhere keeps its warm starts, transfer matrix and report."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from raystudy.cli import main
from raystudy.layout import Layout
from raystudy.results import TRIALS, ResultStore
from raystudy.runner import run_study
from raystudy.spec import load_study
from raystudy.warmstart import resolve


def fake_folder(out: Path, tid: str = "t0") -> Path:
    ck = out / "tune-20250101-000000" / tid / "checkpoint_000001"
    ck.mkdir(parents=True)
    torch.save({"w": torch.ones(1)}, ck / "model.pt")
    return ck


def test_checkpoints_are_stored_relative_and_resolved_in_the_folder(tmp_path):
    out = tmp_path / "a" / "study"
    ck = fake_folder(out)
    store = ResultStore(out)
    store.record({"trial_id": "t0", "params": {}, "config": {}}, "completed", {}, checkpoint=str(ck.resolve()))
    stored = pd.read_parquet(out / TRIALS)["checkpoint"].iloc[0]
    assert stored == "tune-20250101-000000/t0/checkpoint_000001"
    assert Layout(out).final_weights("t0", named=stored) == (ck / "model.pt").resolve()
    # A path outside the folder stays as it is.
    assert Layout(out).relative("/elsewhere/x") == "/elsewhere/x"

    # Moved: the relative path resolves in the new place.
    moved = tmp_path / "b" / "study"
    shutil.move(str(out.parent), str(moved.parent))
    assert Layout(moved).final_weights("t0", named=stored) == (moved / stored / "model.pt").resolve()

    # Copied, with an absolute path from an older raystudy that still exists at the original:
    # the copy reads its own file, not the original's.
    copy = tmp_path / "c" / "study"
    shutil.copytree(moved, copy)
    old_abs = str((moved / stored).resolve())
    assert Layout(copy).final_weights("t0", named=old_abs) == (copy / stored / "model.pt").resolve()
    # ... and an absolute path the folder does not hold is used as it is.
    other = fake_folder(tmp_path / "d" / "study", "t9")
    assert Layout(copy).local(str(other)) == other


STUDY = """
name: portable
data: {{dataset: synthetic, train_size: 128, test_size: 64}}
model: {{arch: stdcnn_mnist, channels: [4, 4, 8, 8], hidden: 16}}
train: {{epochs: 1, batch_size: 32{init}}}
space:
  seed: {{grid: {seeds}}}
evaluate: [accuracy]
resources: {{cpu: 1}}
report:
  - {{chart: line, x: seed, y: accuracy}}
"""


@pytest.mark.slow   # real Ray trials
def test_a_moved_results_folder_keeps_report_collect_warm_start_and_transfer(ray_local, tmp_path, capsys):
    src = tmp_path / "src.yaml"
    src.write_text(STUDY.format(init="", seeds="[0, 1]"))
    first = run_study(load_study(src), tmp_path / "results", dashboard=False, verbose=False)
    assert first.completed == 2
    rows = pd.read_parquet(first.out / TRIALS)
    assert all(not Path(c).is_absolute() and c.startswith("tune-") for c in rows["checkpoint"])

    # The folder moves (to a laptop, another mount point); the original is gone.
    moved = tmp_path / "laptop" / "portable"
    moved.parent.mkdir()
    shutil.move(str(first.out), str(moved))
    assert not first.out.exists()

    assert main(["report", str(moved), "--no-png"]) == 0
    assert (moved / "report.html").exists()
    before = pd.read_parquet(moved / TRIALS).set_index("trial_id")
    (moved / TRIALS).unlink()
    assert main(["collect", str(moved)]) == 0
    after = pd.read_parquet(moved / TRIALS).set_index("trial_id")
    assert after.loc[before.index, "checkpoint"].tolist() == before["checkpoint"].tolist()
    for tid, c in after["checkpoint"].items():
        assert (moved / c / "model.pt").is_file(), tid

    # The transfer step reads every model from the moved folder.
    from raystudy.poststeps import run_after_steps
    written = run_after_steps({"after": [{"transfer": {"attacks": ["fgsm"], "eps": 0.1, "n": 32}}]}, moved)
    matrix = pd.read_parquet(written["transfer"])
    assert len(matrix) == 4 and set(matrix["source_trial"]) == set(before.index)

    # A warm start from the moved folder, through Ray.
    init = f", init_from: {{results: {moved}, match: {{seed: 0}}}}"
    ft = tmp_path / "ft.yaml"
    ft.write_text(STUDY.format(init=init, seeds="[0]").replace("name: portable", "name: finetune"))
    weights = resolve({"results": str(moved), "match": {"seed": 0}})
    assert weights.is_relative_to(moved.resolve())
    second = run_study(load_study(ft), tmp_path / "results", dashboard=False, verbose=False)
    assert second.completed == 1 and second.failed == 0
