"""The study-level transfer step: adversarial examples of every model against every model."""

from __future__ import annotations

import os

import pandas as pd
import pytest
import torch
import torchattacks

from raystudy.data import load
from raystudy.errors import StudyError
from raystudy.metrics.base import EvalContext, predict
from raystudy.models import build_model
from raystudy.poststeps import TransferOptions, run_after_steps, validate_after
from raystudy.results import PLAN, TRIALS, write_json_atomic
from raystudy.spec.validate import validate_trial

EPS = 0.3
AFTER = [{"transfer": {"attacks": ["fgsm", "pgd"], "eps": EPS, "n": 100, "steps": 5}}]


def trial(seed: int) -> dict:
    config = {"seed": seed,
              "data": {"dataset": "synthetic", "train_size": 256, "test_size": 128},
              "model": {"arch": "stdcnn_mnist", "channels": [4, 4, 8, 8], "hidden": 16},
              "train": {"epochs": 1}, "evaluate": ["accuracy"]}
    return {"trial_id": f"t{seed}", "params": {"seed": seed}, "config": config}


def train(t: dict, steps: int) -> torch.nn.Module:
    parsed = validate_trial(t["config"])
    data = load(parsed.cfg.data).to("cpu")
    torch.manual_seed(parsed.cfg.seed)
    model = build_model(parsed.model, data.info)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for i in range(steps):
        idx = torch.arange(i * 32, i * 32 + 32) % len(data.x_train)
        loss = torch.nn.functional.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def white_box_accuracy(model, data, attack: str) -> float:
    x, y = EvalContext(model=model, data=data, device=torch.device("cpu")).subset("test", 100)
    torch.manual_seed(0)
    if attack == "fgsm":
        atk = torchattacks.FGSM(model, eps=EPS)
    else:
        atk = torchattacks.PGD(model, eps=EPS, alpha=2.5 * EPS / 5, steps=5, random_start=True)
    return (predict(model, atk(x, y)) == y).float().mean().item()


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Two trained trials in the layout a finished study leaves (plus a failed one), one
    found through the `checkpoint` column, one through the Ray Tune folder fallback."""
    out = tmp_path_factory.mktemp("results") / "study"
    trials = [trial(0), trial(1), trial(2)]
    models = {"t0": train(trials[0], 4), "t1": train(trials[1], 16)}
    write_json_atomic({"name": "study", "trials": trials}, out / PLAN)
    # t0: the Tune folder; an older checkpoint with other weights must not be picked.
    old = out / "tune-20240101-000000" / "t0" / "checkpoint_000000"
    new = out / "tune-20240101-000000" / "t0" / "checkpoint_000001"
    old.mkdir(parents=True)
    new.mkdir(parents=True)
    torch.save(train(trials[0], 0).state_dict(), old / "model.pt")
    torch.save(models["t0"].state_dict(), new / "model.pt")
    os.utime(old / "model.pt", (1, 1))
    # t1: the checkpoint column names its folder.
    ck = out / "elsewhere" / "final"
    ck.mkdir(parents=True)
    torch.save(models["t1"].state_dict(), ck / "model.pt")
    rows = [{"trial_id": "t0", "status": "completed", "checkpoint": None},
            {"trial_id": "t1", "status": "completed", "checkpoint": str(ck)},
            {"trial_id": "t2", "status": "error", "checkpoint": None}]
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(out / TRIALS)
    written = run_after_steps({"name": "study", "after": AFTER}, out)
    return out, models, written


def test_transfer_matrix_diagonal_is_white_box_accuracy(study):
    out, models, written = study
    table = pd.read_parquet(written["transfer"])
    assert written["transfer"] == out / "transfer.parquet"
    assert set(table.columns) >= {"source_trial", "target_trial", "attack", "eps", "accuracy"}
    assert len(table) == 2 * 2 * 2                 # sources x targets x attacks; the failed trial is skipped
    assert set(table.source_trial) == {"t0", "t1"}
    data = load(validate_trial(trial(0)["config"]).cfg.data).to("cpu")
    for attack in ("fgsm", "pgd"):
        for tid, model in models.items():
            row = table[(table.source_trial == tid) & (table.target_trial == tid) & (table.attack == attack)]
            assert len(row) == 1 and bool(row.white_box.iloc[0])
            assert row.accuracy.iloc[0] == pytest.approx(white_box_accuracy(model, data, attack), abs=1e-9)
    assert (table.eps == EPS).all()
    # Crafting on the weak model and testing the strong one is a different number from the
    # strong model's own white-box accuracy: the off-diagonal really is a transfer.
    fg = table[table.attack == "fgsm"].set_index(["source_trial", "target_trial"]).accuracy
    assert fg[("t0", "t1")] != fg[("t1", "t1")]


def test_transfer_is_reproducible(study):
    out, _, written = study
    first = pd.read_parquet(written["transfer"])
    run_after_steps({"name": "study", "after": AFTER}, out)
    pd.testing.assert_frame_equal(first, pd.read_parquet(out / "transfer.parquet"))


def test_validate_after_errors_are_clear():
    with pytest.raises(StudyError) as e:
        validate_after([{"transfr": {}}], "s.yaml")
    assert "did you mean 'transfer'" in str(e.value) and "after.0" in str(e.value)
    with pytest.raises(StudyError) as e:
        validate_after([{"transfer": {"eps": 2}}], "s.yaml")
    assert "after.0.transfer.eps" in str(e.value) and "s.yaml" in str(e.value)
    with pytest.raises(StudyError) as e:
        validate_after([{"transfer": {"attacks": ["cw"], "nn": 3}}], "s.yaml")
    assert "nn" in str(e.value) and "attacks" in str(e.value)
    with pytest.raises(StudyError):
        validate_after([["transfer"]], "s.yaml")
    (name, opts), = validate_after(["transfer"])
    assert name == "transfer" and opts == TransferOptions()
    (_, opts), = validate_after([{"transfer": {"eps": "8/255"}}])
    assert opts.eps == [pytest.approx(8 / 255)]


def test_missing_results_is_a_study_error(tmp_path):
    with pytest.raises(StudyError, match="no finished study"):
        run_after_steps({"after": AFTER}, tmp_path)


def test_no_after_steps_writes_nothing(tmp_path):
    assert run_after_steps({"after": []}, tmp_path) == {}
    assert not (tmp_path / "transfer.parquet").exists()
