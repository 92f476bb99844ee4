"""The training loop: curricula at lr milestones, staged training, warm starts."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from raystudy.data import load
from raystudy.errors import StudyError
from raystudy.execute import run_trial
from raystudy.models import build_model
from raystudy.spec.schema import DataSpec
from raystudy.spec.validate import validate_trial
from raystudy.train import fit
from raystudy import warmstart

TINY_MODEL = {"arch": "stdcnn_mnist", "channels": [4, 4, 8, 8], "hidden": 16}
DATA = {"dataset": "synthetic", "train_size": 64, "test_size": 32}


@pytest.fixture(scope="module")
def synthetic():
    return load(DataSpec(**DATA))


def config(train: dict, **extra) -> dict:
    return {"seed": 0, "device": "cpu", "data": DATA, "model": TINY_MODEL,
            "train": {"batch_size": 32, **train}, **extra}


def train(cfg: dict, bundle):
    parsed = validate_trial(cfg)
    torch.manual_seed(parsed.cfg.seed)
    data = bundle.to("cpu")
    model = build_model(parsed.model, data.info)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    fs = fit(parsed, model, data, torch.device("cpu"))
    return model, fs, init


# ------------------------------------------------------------------------ curriculum

def test_cusp_steps_theta_and_eps_exactly_at_the_lr_milestones(synthetic):
    cusp = {"name": "cusp", "rotations": [30, 60, 90], "eps": [0.01, 0.02, 0.03], "steps": 1, "step_size": 0.01}
    _, fs, _ = train(config({"epochs": 6, "method": cusp, "optimizer": {"name": "sgd", "lr": 0.1},
                             "schedule": {"name": "multistep", "milestones": [2, 4], "gamma": 0.5}}), synthetic)
    h = fs.history
    # Epochs 1-2 at lr 0.1, 3-4 at 0.05, 5-6 at 0.025: the pair changes with the lr, not before.
    assert [e["lr"] for e in h] == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.025])
    assert [e["method.theta"] for e in h] == [30, 30, 60, 60, 90, 90]
    assert [e["method.eps"] for e in h] == pytest.approx([0.01, 0.01, 0.02, 0.02, 0.03, 0.03])
    # The loop trained with the curriculum's augmentation (what it logs is what it applied).
    assert [e["augment.rotation"] for e in h] == [30, 30, 60, 60, 90, 90]
    assert [e["lr_milestone"] for e in h] == [0, 0, 1, 1, 2, 2]


def test_cusp_explicit_milestones_and_the_last_pair_holds(synthetic):
    cusp = {"name": "cusp", "rotations": [0, 45], "eps": [0.0, 0.05], "steps": 1, "step_size": 0.01,
            "milestones": [1]}
    _, fs, _ = train(config({"epochs": 3, "method": cusp}), synthetic)
    assert [e["method.theta"] for e in fs.history] == [0, 45, 45]
    assert [e["method.eps"] for e in fs.history] == pytest.approx([0.0, 0.05, 0.05])


# ----------------------------------------------------------------------------- stages

def test_stages_run_in_order_and_the_second_starts_from_the_firsts_weights(synthetic):
    first = {"epochs": 2, "method": {"name": "pgd_at", "eps": 0.05, "steps": 2, "step_size": 0.03},
             "augment": {"rotation": 10}, "optimizer": {"name": "sgd", "lr": 0.1}}
    # An lr far below float32 resolution: the second stage's SGD steps cannot move the
    # weights, so its final weights are exactly the ones it started from.
    second = {"epochs": 1, "method": {"name": "natural"}, "optimizer": {"name": "sgd", "lr": 1e-30}}
    staged, fs, init = train(config({"stages": [first, second]}), synthetic)
    only_first, fs1, _ = train(config({"stages": [first]}), synthetic)
    h = fs.history
    assert [e["stage"] for e in h] == [0, 0, 1] and [e["epoch"] for e in h] == [1, 2, 3]
    assert [e["lr"] for e in h] == pytest.approx([0.1, 0.1, 1e-30])
    assert [e["augment.rotation"] for e in h] == [10, 10, 0]
    assert "method.eps" in h[0] and "method.eps" not in h[2]
    # The first stage trained; the second received those weights rather than fresh ones.
    assert any(not torch.equal(init[k], v) for k, v in only_first.state_dict().items())
    for k, v in only_first.state_dict().items():
        assert torch.equal(staged.state_dict()[k], v), k


# -------------------------------------------------------------------------- warm start

def _fake_results(tmp_path, trials: list[tuple[str, dict, str]], state: dict) -> "Path":
    """A results folder as `raystudy run` leaves it: plan, table and Ray checkpoint folders."""
    out = tmp_path / "results" / "source"
    out.mkdir(parents=True)
    plan = {"name": "source", "trials": [{"trial_id": t, "params": {}, "config": c} for t, c, _ in trials]}
    (out / "study.json").write_text(json.dumps(plan))
    pd.DataFrame([{"trial_id": t, "status": s} for t, _, s in trials]).to_parquet(out / "trials.parquet")
    for t, _, s in trials:
        if s == "completed":
            for i, scale in ((0, 0.0), (3, 1.0)):        # the final (newest) checkpoint counts
                d = out / "tune-1" / t / f"checkpoint_00000{i}"
                d.mkdir(parents=True)
                torch.save({k: v * scale for k, v in state.items()}, d / "model.pt")
    return out


def test_init_from_resolves_a_config_match_to_the_final_checkpoint(tmp_path, synthetic):
    torch.manual_seed(5)
    src = build_model(validate_trial(config({})).model, synthetic.info)
    state = src.state_dict()
    out = _fake_results(tmp_path, [("aaa", config({"augment": {"rotation": 180}}, seed=0), "completed"),
                                   ("bbb", config({"augment": {"rotation": 180}}, seed=1), "completed"),
                                   ("ccc", config({"augment": {"rotation": 0}}, seed=0), "error")], state)
    spec = {"results": str(out), "match": {"train.augment.rotation": 180, "seed": 1}}
    assert warmstart.find_trial(warmstart.parse(spec))[0] == "bbb"
    loaded = warmstart.load_init_state(spec)
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    # `study` + `root` names the same folder; "180/1" style numbers compare as numbers.
    by_name = {"study": "source", "root": str(tmp_path / "results"), "match": {"seed": "1/1", "train.augment.rotation": 180.0}}
    assert warmstart.find_trial(warmstart.parse(by_name))[0] == "bbb"
    # run_trial loads it: with no epochs the trial's weights are the source's.
    final = run_trial({"trial_id": "t", "params": {}, "config": config({"epochs": 0, "init_from": spec})},
                      synthetic, on_model=lambda m: captured.update(m.state_dict()))
    assert all(torch.equal(captured[k], state[k]) for k in state) and final["epochs_run"] == 0


captured: dict = {}


def test_init_from_errors_say_what_to_fix(tmp_path, synthetic):
    out = _fake_results(tmp_path, [("aaa", config({}, seed=0), "completed"), ("bbb", config({}, seed=1), "completed"),
                                   ("ccc", config({}, seed=2), "error")], {"w": torch.zeros(2)})

    def err(spec, model=None) -> StudyError:
        with pytest.raises(StudyError) as e:
            warmstart.load_init_state(spec, model)
        return e.value

    e = err({"results": str(out), "match": {"train.method.name": "natural"}})
    assert "3 completed" not in str(e) and "aaa" in str(e) and "bbb" in str(e) and "add config paths" in str(e)
    e = err({"results": str(out), "match": {"seed": 7}})
    assert "no trial" in str(e) and "seed in {0, 1, 2}" in str(e)
    assert "is error" in str(err({"results": str(out), "match": {"seed": 2}}))
    assert "no trial 'zzz'" in str(err({"results": str(out), "trial_id": "zzz"}))
    assert "config path 'train.nope'" in str(err({"results": str(out), "match": {"train.nope": 1}}))
    assert "no study results" in str(err({"study": "missing", "root": str(tmp_path), "trial_id": "x"}))
    model = build_model(validate_trial(config({})).model, synthetic.info)
    e = err({"results": str(out), "trial_id": "aaa"}, model)
    assert "do not fit this model" in str(e) and "strict: false" in str(e)
    for bad, what in (({"results": "a", "study": "b", "trial_id": "x"}, "exactly one of 'results'"),
                      ({"results": "a"}, "exactly one of 'trial_id' or 'match'"),
                      ({"results": "a", "trial_id": "x", "mach": {}}, "unknown key 'mach'")):
        with pytest.raises(StudyError) as e:
            validate_trial(config({"init_from": bad}))
        assert what in str(e.value) and "train.init_from" in str(e.value)


# ------------------------------------------------------------------ science, end to end

@pytest.mark.slow
def test_pgd_at_raises_pgd_accuracy_over_natural_on_embedded_mnist(mnist_small):
    import torchattacks
    # 1000 real training digits, 3 epochs; PGD-AT at ε 0.1 (7 steps of 0.03, random start).
    # Measured: natural 0.64 vs pgd_at 0.77 PGD-20 accuracy at ε 0.1 (500 test digits).
    base = {"seed": 0, "device": "cpu", "data": {"dataset": "mnist", "source": "embedded"},
            "model": {"arch": "stdcnn_mnist", "channels": [16, 16, 32, 32], "hidden": 128},
            "train": {"epochs": 3, "batch_size": 50, "optimizer": {"name": "adam", "lr": 0.002}}}
    acc = {}
    for name, m in (("natural", {"name": "natural"}),
                    ("pgd_at", {"name": "pgd_at", "eps": 0.1, "steps": 7, "step_size": 0.03})):
        cfg = json.loads(json.dumps(base))
        cfg["train"]["method"] = m
        parsed = validate_trial(cfg)
        torch.manual_seed(0)
        model = build_model(parsed.model, mnist_small.info)
        fit(parsed, model, mnist_small, torch.device("cpu"))
        model.eval()
        x, y = mnist_small.x_test[:300], mnist_small.y_test[:300]
        # Evaluated with torchattacks' PGD, independent of the training attack.
        adv = torchattacks.PGD(model, eps=0.1, alpha=0.01, steps=20, random_start=True)(x, y)
        with torch.no_grad():
            acc[name] = ((model(x).argmax(1) == y).float().mean().item(),
                         (model(adv).argmax(1) == y).float().mean().item())
    assert acc["natural"][0] > 0.85 and acc["pgd_at"][0] > 0.85, acc
    assert acc["pgd_at"][1] > acc["natural"][1] + 0.06, acc


@pytest.mark.slow
def test_init_from_through_ray_loads_the_source_trials_final_weights(ray_local, tmp_path):
    from raystudy.cli import main
    res = tmp_path / "results"
    src = tmp_path / "src.yaml"
    src.write_text(f"""
name: src
data: {json.dumps(DATA)}
model: {json.dumps(TINY_MODEL)}
train: {{epochs: 1, batch_size: 32, method: {{name: natural}}}}
space: {{seed: {{grid: [0, 1]}}}}
evaluate: [accuracy]
""")
    dst = tmp_path / "dst.yaml"
    dst.write_text(f"""
name: dst
data: {json.dumps(DATA)}
model: {json.dumps(TINY_MODEL)}
train: {{epochs: 0, init_from: {{study: src, root: "{res}", match: {{seed: 1}}}}}}
evaluate: [accuracy]
""")
    assert main(["run", str(src), "--results", str(res), "--no-dashboard"]) == 0
    assert main(["run", str(dst), "--results", str(res), "--no-dashboard"]) == 0
    s = pd.read_parquet(res / "src" / "trials.parquet").set_index("seed")
    d = pd.read_parquet(res / "dst" / "trials.parquet")
    assert (d["status"] == "completed").all()
    # No training in the destination: its accuracy is the warm-started seed-1 model's.
    assert d["accuracy"].iloc[0] == s.loc[1, "accuracy"]
