"""Contract tests over every entry of every registry (docs/ARCHITECTURE.md: "every registry
entry gets exercised by a contract test on a tiny batch"): metrics, training methods,
optimizers, schedules, datasets, models, attacks and after-study steps. Charts and study
sections are covered by the report tests.

Each registry kind has a table of cases by entry name; an entry registered later without a
case fails `test_every_registered_entry_has_a_contract_case` (and its own parametrized test).
"""

from __future__ import annotations

import atexit
import copy
import io
import math
import pickle
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from raystudy import registry
from raystudy.attacks import AttackInfo, attack, attack_parameters, perturbation_norm
from raystudy.data import CIFAR10_STATS, MNIST_STATS, DataInfo, load
from raystudy.methods.base import Method, TrainState
from raystudy.metrics.base import EvalContext, Metric, MetricOptions, predict
from raystudy.models.stdcnn import StdCNN, StdCNNOptions
from raystudy.registry import (AFTER_STEPS, ATTACKS, DATASETS, METHODS, METRICS, MODELS, OPTIMIZERS,
                               SCHEDULES)
from raystudy.spec.schema import AugmentSpec, DataSpec

from helpers import assert_uncertainty_contract
from test_data import write_idx

CPU = torch.device("cpu")
SYN = DataInfo(1, 12, 12, 4, (0.5,), (0.25,))


def tiny_cnn(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return StdCNN(StdCNNOptions(channels=[4, 4, 8, 8], hidden=16, dropout=0.1), SYN)


def fit(model, data, steps: int = 30, seed: int = 0) -> torch.nn.Module:
    """A few Adam steps on the synthetic quadrant task: a model that is right most of the time."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for i in range(steps):
        idx = torch.arange(i * 32, i * 32 + 32) % len(data.x_train)
        loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    return model.eval()


@pytest.fixture(scope="module")
def syn():
    """Synthetic 1x12x12 data without a validation split (the empty subset)."""
    return load(DataSpec(dataset="synthetic", train_size=128, test_size=48, val_fraction=0.0)).to(CPU)


@pytest.fixture(scope="module")
def trained(syn):
    return fit(tiny_cnn(), syn)


# ------------------------------------------------------------------------------ metrics

METRIC_CASES = {
    "accuracy": {},
    "robustness": {"attack": "pgd", "eps": [0, 0.1], "steps": 2, "n": 16},
    "invariance": {"thetas": [0, 90], "angles": [90], "n": 16},
    "boundary_distance": {"n": 16, "steps": 5},
    "hessian": {"samples": 16, "batch_size": 8, "top_n": 1, "max_iter": 3, "trace_samples": 2,
                "density": True, "slq_iterations": 4, "density_grid": 10},
    "svd_universal": {"n_fit": 8, "n_eval": 8, "l2": [0, 1], "linf": [0.1], "random_draws": 1,
                      "deepfool_steps": 3},
    "invariant_directions": {"n": 8, "rotations": [90]},
    "perturbation_pca": {"attack": "fgsm", "n": 16, "k": 3},
    "perturbation_covariance": {"attack": "fgsm", "n": 16},
    "lrc_noise": {"decay_lengths": [2.0], "strengths": [0, 0.2], "k": 2, "n": 16},
    "spatial_attack": {"n": 16, "grid_angles": 3, "grid_shifts": 3, "k": 3,
                       "surface": {"angles": [0, 90], "eps": [0, 0.1], "steps": 2}},
    "corruption": {"corruptions": ["gaussian_noise", "motion_blur", "rotate"], "severities": [0, 3], "n": 16},
}


def run_metric(name, model, data, **opts):
    entry = METRICS.get(name)
    return entry.obj(EvalContext(model, data, CPU), entry.schema.model_validate(opts))


@pytest.mark.parametrize("name", METRICS.names())
def test_metric_contract(name, trained, syn):
    assert name in METRIC_CASES, f"metric '{name}' has no contract case"
    entry = METRICS.get(name)
    assert isinstance(entry.obj, Metric) and issubclass(entry.schema, MetricOptions)
    assert entry.doc, "a metric's docstring cites its paper"
    results = []
    for mode in (True, False):
        trained.train(mode)
        res = run_metric(name, trained, syn, **METRIC_CASES[name])
        # The template restores the caller's mode (every submodule) and leaves no gradients.
        assert all(m.training == mode for m in trained.modules())
        assert all(p.grad is None and p.requires_grad for p in trained.parameters())
        results.append(res)
    trained.eval()
    res = results[0]
    assert res.scalars and res.seconds > 0
    for k, v in res.scalars.items():
        assert isinstance(v, float) and math.isfinite(v), (k, v)
    for row in res.curves:
        assert row["metric"].split(".")[0] == name, row     # curves are namespaced by the metric
        assert math.isfinite(row["x"])
        assert isinstance(row["x_title"], str) and row["x_title"] and row["x_title"] != "x", row
    # Seeded subset and draws, evaluated in eval mode: the training mode changes nothing.
    assert results[1].scalars == res.scalars and results[1].curves == res.curves
    assert_uncertainty_contract(res)


# Option sets beside the contract cases whose outputs depend on them (names, acc_at, norms, kinds).
OUTPUT_CASES = [(name, opts) for name, opts in METRIC_CASES.items()] + [
    ("accuracy", {"splits": ["test", "train"]}),
    ("robustness", {"attack": "pgd", "eps": [0, 0.1], "acc_at": [0.05, 8 / 255], "steps": 1, "n": 8, "name": "x"}),
    ("robustness", {"attack": "pgd_l2", "eps": [0, 0.5], "steps": 1, "n": 8}),
    ("invariance", {"kind": "translation", "levels": [0, 0.2], "n": 8}),
    ("invariance", {"angles": [90], "t180": False, "n": 8}),
    ("hessian", {"samples": 8, "batch_size": 8, "top_n": 2, "max_iter": 2, "trace": False}),
    ("svd_universal", {"n_fit": 4, "n_eval": 4, "attacks": ["fgsm"], "l2": [], "linf": [0.1], "random_draws": 1}),
    ("perturbation_covariance", {"attack": "pgd", "steps": 1, "n": 8}),
    ("lrc_noise", {"decay_lengths": [2.0, 5.5], "strengths": [0.1], "k": 1, "n": 8}),
    ("spatial_attack", {"modes": ["random"], "n": 8, "surface": {"angles": [30], "eps": [0, "8/255"], "steps": 1}}),
    ("spatial_attack", {"modes": ["grid"], "grid_angles": 1, "translation": 1, "n": 8}),
    ("corruption", {"corruptions": "mnist_c", "severities": [0, 5], "n": 8}),
    ("corruption", {"corruptions": ["contrast"], "severities": [0], "n": 8}),
]


@pytest.mark.parametrize("name,opts", OUTPUT_CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(OUTPUT_CASES)])
def test_metric_declares_exactly_what_it_writes(name, opts, trained, syn):
    """`outputs(options)` is what claims are validated against before Ray starts: it must name
    every scalar and curve `compute` writes under those options, and nothing else."""
    entry = METRICS.get(name)
    o = entry.schema.model_validate(opts)
    res = entry.obj(EvalContext(trained, syn, CPU), o)
    scalars, curves = entry.obj.outputs(o)
    if not len(syn.x_val):
        # A split without images measures nothing (the next test), so it writes no accuracy.val.
        scalars = [s for s in scalars if s != "accuracy.val"]
    assert sorted(scalars) == sorted(res.scalars)
    assert sorted(curves) == sorted({row["metric"] for row in res.curves})


@pytest.mark.parametrize("name", METRICS.names())
def test_metric_on_an_empty_subset_measures_nothing(name, trained, syn):
    assert len(syn.x_val) == 0
    opts = {**METRIC_CASES.get(name, {}), "split": "val"}
    res = run_metric(name, trained, syn, **opts)
    assert res.scalars == {} and res.curves == []
    assert not trained.training


# ------------------------------------------------------------------------------ methods

METHOD_CASES = {
    "natural": {},
    "pgd_at": {"eps": 0.1, "step_size": 0.05, "steps": 2},
    "fgsm_at": {"eps": 0.1},
    "fgsm_rs": {"eps": 0.1},
    "mixed": {"attack": "pgd", "eps": 0.1, "step_size": 0.05, "steps": 2},
    "trades": {"eps": 0.1, "step_size": 0.05, "steps": 2},
    "cusp": {"rotations": [30, 60], "eps": [0.05, 0.1], "steps": 2, "step_size": 0.05},
    "gn": {"strength": 0.5},
    "sgr": {"strength": 0.5, "source": "pgd", "eps": 0.1, "steps": 2},
}


def train_state(seed: int = 0) -> TrainState:
    return TrainState(epoch=0, stage_epoch=0, lr=0.1, lr_stepped=False, milestone_index=0,
                      augment=AugmentSpec(), device=CPU, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", METHODS.names())
def test_method_contract(name, syn):
    assert name in METHOD_CASES, f"training method '{name}' has no contract case"
    entry = METHODS.get(name)
    method = entry.obj(entry.schema.model_validate(METHOD_CASES[name]), SYN)
    assert isinstance(method, Method) and entry.doc
    model = tiny_cnn().train()
    x, y = syn.x_train[:16], syn.y_train[:16]
    state = train_state()
    method.on_epoch_start(model, state)
    loss, logs = method.loss(model, x, y, state)
    assert model.training, "a method's inner attack must hand the model back in train mode"
    assert loss.dim() == 0 and torch.isfinite(loss) and loss.requires_grad
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    for k, v in logs.items():
        assert torch.is_tensor(v) and v.dim() == 0 and torch.isfinite(v), k
    assert all(isinstance(v, (int, float)) for v in method.epoch_log().values())
    again = entry.obj(entry.schema.model_validate(METHOD_CASES[name]), SYN)
    again.load_state_dict(method.state_dict())


# ------------------------------------------------------------------- optimizers, schedules

OPTIMIZER_CASES = {"sgd": {"lr": 0.1, "momentum": 0.9}, "adam": {"lr": 0.01}}


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_optimizer_contract(name):
    assert name in OPTIMIZER_CASES, f"optimizer '{name}' has no contract case"
    entry = OPTIMIZERS.get(name)
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = entry.obj([w], entry.schema.model_validate(OPTIMIZER_CASES[name]))
    for _ in range(3):
        opt.zero_grad()
        (w ** 2).sum().backward()
        opt.step()
    # Descending on |w|²: every step moves towards 0.
    assert (w.detach().abs() < torch.tensor([1.0, 2.0])).all()


# name -> (options, epochs, lr multipliers expected after each of 4 epochs)
SCHEDULE_CASES = {
    "constant": ({}, 4, [1.0, 1.0, 1.0, 1.0]),
    "multistep": ({"milestones": [1, 3], "gamma": 0.1}, 4, [0.1, 0.1, 0.01, 0.01]),
    "cosine": ({"min_lr": 0.0}, 4, [(1 + math.cos(math.pi * e / 4)) / 2 for e in range(1, 5)]),
}


@pytest.mark.parametrize("name", SCHEDULES.names())
def test_schedule_contract(name):
    assert name in SCHEDULE_CASES, f"schedule '{name}' has no contract case"
    opts, epochs, want = SCHEDULE_CASES[name]
    entry = SCHEDULES.get(name)
    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([w], lr=0.5)
    sched = entry.obj(opt, entry.schema.model_validate(opts), epochs)
    got = []
    for _ in range(epochs):
        opt.step()
        sched.step()
        got.append(opt.param_groups[0]["lr"] / 0.5)
    assert got == pytest.approx(want, abs=1e-12)


# ----------------------------------------------------------------------------- datasets

def _mnist_files(root):
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (30, 28, 28)), rng.integers(0, 10, 30)
    for stem, n in (("train", 20), ("t10k", 10)):
        lo = 0 if stem == "train" else 20
        write_idx(raw / f"{stem}-images-idx3-ubyte", x[lo:lo + n])
        write_idx(raw / f"{stem}-labels-idx1-ubyte", y[lo:lo + n])


def _cifar_files(root, classes: int):
    rng = np.random.default_rng(classes)

    def batch(n):
        labels = [int(v) for v in rng.integers(0, classes, n)]
        key = "labels" if classes == 10 else "fine_labels"
        return {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), key: labels}

    if classes == 10:
        folder = root / "cifar-10-batches-py"
        files = {f"data_batch_{i}": batch(4) for i in range(1, 6)}
        files.update({"test_batch": batch(6), "batches.meta": {"label_names": [f"c{i}" for i in range(10)]}})
    else:
        folder = root / "cifar-100-python"
        files = {"train": batch(20), "test": batch(6),
                 "meta": {"fine_label_names": [f"c{i}" for i in range(100)]}}
    folder.mkdir(parents=True)
    for name, obj in files.items():
        with open(folder / name, "wb") as f:
            pickle.dump(obj, f)


# name -> [(case id, writes files under root or None, DataSpec options, (train, test) sizes)]
DATASET_CASES = {
    "synthetic": [("generated", None, {"train_size": 40, "test_size": 12}, (40, 12))],
    "mnist": [("embedded", None, {"source": "embedded", "train_size": 40, "test_size": 12}, (40, 12)),
              ("torchvision files", _mnist_files, {"source": "torchvision"}, (18, 10))],
    "cifar10": [("torchvision files", lambda r: _cifar_files(r, 10), {}, (18, 6))],
    "cifar100": [("torchvision files", lambda r: _cifar_files(r, 100), {}, (18, 6))],
}


@pytest.mark.parametrize("name", DATASETS.names())
def test_dataset_contract(name, tmp_path):
    assert name in DATASET_CASES, f"dataset '{name}' has no contract case"
    entry = DATASETS.get(name)
    for case, write, opts, (n_train, n_test) in DATASET_CASES[name]:
        root = tmp_path / case.replace(" ", "_")
        if write is not None:
            write(root)
        spec = DataSpec(dataset=name, root=str(root), val_fraction=0.1, **opts)
        b = entry.obj(spec)
        i = b.info
        assert (len(b.x_train), len(b.x_test)) == (n_train, n_test), case
        assert len(b.x_val) >= 1, case
        for x, y in ((b.x_train, b.y_train), (b.x_val, b.y_val), (b.x_test, b.y_test)):
            assert x.dtype == torch.uint8 and x.shape[1:] == (i.channels, i.height, i.width), case
            assert y.dtype == torch.int64 and len(y) == len(x), case
            assert 0 <= y.min() and y.max() < i.num_classes, case
        assert len(i.mean) == len(i.std) == i.channels
        # Fixed splits: loading twice gives the same images.
        assert torch.equal(entry.obj(spec).x_train, b.x_train), case
        d = b.to(CPU)
        assert d.x_test.dtype == torch.float32 and 0 <= d.x_test.min() and d.x_test.max() <= 1


# ------------------------------------------------------------------------------ attacks

# name -> (hyperparameters, ε of a budget attack)
ATTACK_CASES = {
    "fgsm": ({}, 0.1),
    "pgd": ({"steps": 3}, 0.1),
    "pgd_l2": ({"steps": 3}, 0.5),
    # At ε = 0.5 APGD breaks every input, so AutoAttack skips its 5,000-query Square stage.
    "autoattack": ({"version": "standard"}, 0.5),
    "deepfool": ({"steps": 5}, None),
    "deepfool_batched": ({"steps": 5}, None),
    "deepfool_torchattacks": ({"steps": 5}, None),
    "cw": ({"steps": 30, "c": 10.0, "lr": 0.1}, None),
}


@pytest.mark.parametrize("name", ATTACKS.names())
def test_attack_contract(name, trained, syn):
    assert name in ATTACK_CASES, f"attack '{name}' has no contract case"
    entry = ATTACKS.get(name)
    info = entry.obj
    assert isinstance(info, AttackInfo) and info.name == name and info.norm in ("Linf", "L2") and entry.doc
    assert set(entry.schema.model_fields) <= set(attack_parameters())
    entry.schema()  # every hyperparameter has a default
    x, y = syn.x_test[:6], syn.y_test[:6]
    hp, eps = ATTACK_CASES[name]
    assert (eps is not None) == info.budget
    adv = attack(trained, name, x, y, eps, batch_size=4, **hp)
    assert adv.shape == x.shape and torch.isfinite(adv).all()
    assert adv.min() >= 0 and adv.max() <= 1
    assert not trained.training and all(p.requires_grad and p.grad is None for p in trained.parameters())
    if info.budget:
        assert perturbation_norm(adv - x, info.norm).max() <= eps * (1 + 1e-4)
        assert torch.equal(attack(trained, name, x, y, 0.0, **hp), x)
    else:
        # A minimal-perturbation attack moves at least one input across the boundary.
        assert (predict(trained, adv) != predict(trained, x)).any()


# ------------------------------------------------------------------------- after steps

def _transfer_case(step, schema, tmp_path, syn):
    """Two recorded trials; at ε = 0 every cell is the target's clean accuracy."""
    from raystudy.results import PLAN, TRIALS, write_json_atomic
    out = tmp_path / "study"
    trials, rows = [], []
    for seed in (0, 1):
        config = {"seed": seed, "data": {"dataset": "synthetic", "train_size": 128, "test_size": 48,
                                         "val_fraction": 0.0},
                  "model": {"arch": "stdcnn_mnist", "channels": [4, 4, 8, 8], "hidden": 16, "dropout": 0.1},
                  "train": {"epochs": 1}, "evaluate": ["accuracy"]}
        trials.append({"trial_id": f"t{seed}", "params": {"seed": seed}, "config": config})
        ck = out / f"t{seed}" / "checkpoint_000000"
        ck.mkdir(parents=True)
        torch.save(fit(tiny_cnn(seed), syn, steps=5 + 20 * seed, seed=seed).state_dict(), ck / "model.pt")
        rows.append({"trial_id": f"t{seed}", "status": "completed", "checkpoint": str(ck)})
    write_json_atomic({"name": "study", "trials": trials}, out / PLAN)
    pd.DataFrame(rows).to_parquet(out / TRIALS)
    opts = schema.model_validate({"attacks": ["fgsm", "pgd"], "eps": [0, 0.2], "n": 24, "steps": 2,
                                  "device": "cpu"})
    table = pd.read_parquet(step(out, opts))
    assert len(table) == 2 * 2 * 2 * 2                      # sources x targets x attacks x eps
    assert table.accuracy.between(0, 1).all() and (table.n == 24).all()
    assert (table.white_box == (table.source_trial == table.target_trial)).all()
    zero = table[table.eps == 0]
    assert (zero.accuracy == zero.target_clean_accuracy).all()
    assert (table[table.eps > 0].accuracy <= table[table.eps > 0].target_clean_accuracy + 1e-12).all()


AFTER_CASES = {"transfer": _transfer_case}


@pytest.mark.parametrize("name", sorted(set(AFTER_STEPS.names()) | set(AFTER_CASES)))
def test_after_step_contract(name, tmp_path, syn):
    assert name in AFTER_CASES, f"after step '{name}' has no contract case"
    e = AFTER_STEPS.get(name)
    AFTER_CASES[name](e.obj, e.schema, tmp_path, syn)


# ------------------------------------------------------------------------------- models
# Every model, on a tiny batch, must behave like a plain torch model for training, attacks
# (input gradients), Hessians (repeated and double backward in eval mode), checkpoints and
# copies. escnn's R2Conv breaks several of these in eval mode (see PITFALLS and
# tests/test_gcnn.py::test_raw_escnn_r2conv_has_the_pitfalls); the GCNNs here must not.

MNIST = DataInfo(1, 28, 28, 10, *MNIST_STATS)
CIFAR = DataInfo(3, 32, 32, 10, *CIFAR10_STATS)
# The contract does not depend on image size: smaller inputs keep the CPU test quick.
GRAY = DataInfo(1, 20, 20, 10, *MNIST_STATS)
COLOR = DataInfo(3, 16, 16, 10, *CIFAR10_STATS)

# Small instances of each model (the contract depends on neither width nor input size;
# vgg16 needs sides divisible by 32); "arch[variant]" names a second configuration.
MODEL_CASES = {
    "stdcnn_mnist": (GRAY, {"channels": [4, 4, 8, 8], "hidden": 16, "batchnorm": True, "dropout": 0.1}),
    "gcnn_mnist": (GRAY, {"channels": [4, 4, 8, 8], "hidden": 16, "batchnorm": True, "dropout": 0.1}),
    "gcnn_mnist[c8]": (GRAY, {"group": "c8", "channels": [4, 4, 8, 8], "hidden": 16}),
    "gcnn_mnist[d4]": (GRAY, {"group": "d4", "channels": [4, 4, 8, 8], "hidden": 16}),
    "vgg16": (CIFAR, {"width": 1 / 16}),
    "gcnn_vgg16": (CIFAR, {"width": 1 / 16}),
    "resnet18": (COLOR, {"width": 1 / 16}),
    "gcnn_resnet18": (COLOR, {"width": 1 / 16}),
    "gcnn_resnet18[c8, no bn]": (COLOR, {"group": "c8", "width": 1 / 16, "batchnorm": False}),
    "lenet_madry": (GRAY, {"channels": [4, 8], "hidden": 16}),
    "resnet_madry": (COLOR, {"widen": 1, "units": 2}),
    "resnet_madry[dataset stats]": (COLOR, {"widen": 1, "units": 1, "per_image": False}),
    "wrn34_10": (COLOR, {"depth": 10, "widen": 1}),
    "sgr_cnn": (GRAY, {"params": [4, 4, 8, 8, 16, 16]}),
    "sgr_cnn[cifar]": (COLOR, {"params": [4, 4, 8, 8, 16, 16], "dropout": 0.5}),
    "mlp": (GRAY, {"hidden": [32, 16], "dropout": 0.1}),
}


def _external_files() -> dict[str, str]:
    """Weight files for the models that load one, written once into a folder removed at exit:
    a StdCNN state dict (checkpoint), a scripted CNN (torchscript), a RobustBench-layout
    WRN-10-1 (robustbench)."""
    from test_external_models import RBWideResNet
    d = Path(tempfile.mkdtemp(prefix="raystudy-contracts-"))
    atexit.register(shutil.rmtree, d, True)
    torch.manual_seed(5)
    std = MODELS.get("stdcnn_mnist")
    torch.save(std.obj(std.schema.model_validate(EXTERNAL_BASE), GRAY).state_dict(), d / "std.pt")
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                              torch.nn.Flatten(), torch.nn.Linear(4 * 20 * 20, 10))
    torch.jit.save(torch.jit.script(net), str(d / "net.pt"))
    torch.save(RBWideResNet(depth=10, widen=1).state_dict(), d / "rb.pt")
    return {k: str(d / f) for k, f in (("checkpoint", "std.pt"), ("torchscript", "net.pt"), ("robustbench", "rb.pt"))}


EXTERNAL_BASE = {"channels": [4, 4, 8, 8], "hidden": 16, "batchnorm": True, "dropout": 0.1}
EXTERNAL = _external_files()
MODEL_CASES.update({
    "checkpoint": (GRAY, {"path": EXTERNAL["checkpoint"], "base": "stdcnn_mnist", "base_options": EXTERNAL_BASE}),
    "torchscript": (GRAY, {"path": EXTERNAL["torchscript"], "normalize": {"mean": [0.13], "std": [0.31]}}),
    "robustbench": (COLOR, {"name": "Standard", "path": EXTERNAL["robustbench"], "depth": 10, "widen": 1}),
})


def _arch(case: str) -> str:
    return case.split("[")[0]


# Every registered model, with its cases; a model without one fails its own test.
MODELS_AND_CASES = sorted(set(MODEL_CASES) | set(MODELS.names()))
_built: dict[str, torch.nn.Module] = {}
_other: dict[str, torch.nn.Module] = {}


def build(case: str, seed: int = 0) -> torch.nn.Module:
    assert case in MODEL_CASES, f"model '{case}' has no contract case"
    info, opts = MODEL_CASES[case]
    entry = MODELS.get(_arch(case))
    torch.manual_seed(seed)
    return entry.obj(entry.schema.model_validate(opts), info)


def fresh(case: str) -> torch.nn.Module:
    """A copy of a cached, pristine train-mode model (escnn builds are slow-ish)."""
    if case not in _built:
        _built[case] = build(case)
    return copy.deepcopy(_built[case]).train()


def other(case: str) -> torch.nn.Module:
    """A differently initialized instance (train mode), to load checkpoints into."""
    if case not in _other:
        _other[case] = build(case, seed=123)
    return copy.deepcopy(_other[case]).train()


def batch(case: str, n: int = 4, seed: int = 1):
    info = MODEL_CASES[case][0]
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, info.channels, info.height, info.width, generator=g)
    y = torch.randint(0, info.num_classes, (n,), generator=g)
    return x, y


@pytest.mark.parametrize("case", MODELS_AND_CASES)
def test_model_forward_gives_plain_finite_logits(case):
    m = fresh(case)
    x, _ = batch(case)
    classes = MODEL_CASES[case][0].num_classes
    for mode in (True, False):
        m.train(mode)
        y = m(x)
        assert type(y) is torch.Tensor          # not an escnn GeometricTensor
        assert y.shape == (len(x), classes) and y.dtype == torch.float32
        assert torch.isfinite(y).all()
    # The logits depend on the input (a constant model would pass the rest trivially).
    assert (y[0] - y[1]).abs().max() > 1e-6


@pytest.mark.parametrize("case", MODELS_AND_CASES)
def test_model_backward_reaches_every_parameter(case):
    m = fresh(case)
    x, y = batch(case, n=8)
    F.cross_entropy(m(x), y).backward()
    for name, p in m.named_parameters():
        assert p.grad is not None, f"{name} gets no gradient"
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} has an all-zero gradient"


@pytest.mark.parametrize("case", MODELS_AND_CASES)
def test_model_input_gradient_in_eval_mode(case):
    m = fresh(case).eval()
    x, y = batch(case)
    x.requires_grad_(True)
    F.cross_entropy(m(x), y).backward()
    assert x.grad is not None and x.grad.shape == x.shape
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("case", MODELS_AND_CASES)
def test_model_train_eval_round_trip_reproduces_outputs(case):
    m = fresh(case).eval()
    x, _ = batch(case)
    with torch.no_grad():
        y0 = m(x)
    m.train()
    assert all(mod.training for mod in m.modules())
    m.eval()
    assert not any(mod.training for mod in m.modules())
    with torch.no_grad():
        y1 = m(x)
    torch.testing.assert_close(y1, y0, rtol=0, atol=0)


@pytest.mark.parametrize("case", MODELS_AND_CASES)
@pytest.mark.parametrize("save_mode,load_mode", [("eval", "train"), ("train", "eval")])
def test_model_state_dict_round_trip_across_modes(case, save_mode, load_mode):
    src = fresh(case)
    x, y = batch(case, n=8)
    # One train step so that weights and batch-norm statistics differ from init.
    opt = torch.optim.SGD(src.parameters(), lr=0.05)
    F.cross_entropy(src(x), y).backward()
    opt.step()
    getattr(src, save_mode)()
    buf = io.BytesIO()
    torch.save(src.state_dict(), buf)
    buf.seek(0)
    dst = other(case)
    getattr(dst, load_mode)()
    dst.load_state_dict(torch.load(buf, weights_only=True), strict=True)
    src.eval()
    dst.eval()
    with torch.no_grad():
        torch.testing.assert_close(dst(x), src(x), rtol=0, atol=0)
        assert not torch.equal(other(case).eval()(x), src(x))


@pytest.mark.parametrize("case", MODELS_AND_CASES)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_model_deepcopy_is_independent_and_equal(case, mode):
    m = getattr(fresh(case), mode)()
    x, _ = batch(case)
    with torch.no_grad():
        ref = m.eval()(x)
    getattr(m, mode)()
    c = copy.deepcopy(m)
    assert c.training == m.training
    with torch.no_grad():
        torch.testing.assert_close(c.eval()(x), ref, rtol=0, atol=0)
        for p in c.parameters():
            p.add_(0.1)
        torch.testing.assert_close(m.eval()(x), ref, rtol=0, atol=0)


@pytest.mark.parametrize("case", MODELS_AND_CASES)
def test_model_repeated_and_double_backward_in_eval_mode(case):
    """What Hessian tools do: several parameter-gradient backwards and Hessian-vector
    products in eval mode. The Hessian is symmetric: u.(Hv) == v.(Hu)."""
    m = fresh(case).eval()
    x, y = batch(case)
    params = [p for p in m.parameters() if p.requires_grad]
    grads = []
    for _ in range(2):
        grads.append(torch.autograd.grad(F.cross_entropy(m(x), y), params))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)
    g = torch.Generator().manual_seed(7)
    u = [torch.randn(p.shape, generator=g) for p in params]
    v = [torch.randn(p.shape, generator=g) for p in params]

    def hvp(vec):
        gr = torch.autograd.grad(F.cross_entropy(m(x), y), params, create_graph=True)
        dot = sum((a * b).sum() for a, b in zip(gr, vec))
        return torch.autograd.grad(dot, params)

    hu, hv = hvp(u), hvp(v)
    uhv = sum((a * b).sum() for a, b in zip(u, hv))
    vhu = sum((a * b).sum() for a, b in zip(v, hu))
    assert torch.isfinite(uhv) and uhv.abs() > 0
    torch.testing.assert_close(uhv, vhu, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("case", MODELS_AND_CASES)
def test_model_eval_under_no_grad_keeps_parameter_gradients(case):
    m = fresh(case)
    with torch.no_grad():
        m.eval()
    x, y = batch(case)
    F.cross_entropy(m(x), y).backward()
    assert all(p.grad is not None for p in m.parameters())


# ----------------------------------------------------------------------------- coverage

CASES = {METRICS.kind: METRIC_CASES, METHODS.kind: METHOD_CASES, OPTIMIZERS.kind: OPTIMIZER_CASES,
         SCHEDULES.kind: SCHEDULE_CASES, DATASETS.kind: DATASET_CASES, ATTACKS.kind: ATTACK_CASES,
         AFTER_STEPS.kind: AFTER_CASES, MODELS.kind: {_arch(c): c for c in MODEL_CASES}}
ELSEWHERE = (registry.CHARTS, registry.SECTIONS)   # tests/test_report.py, tests/test_charts.py


@pytest.mark.parametrize("reg", [r for r in registry.ALL if r not in ELSEWHERE], ids=lambda r: r.kind)
def test_every_registered_entry_has_a_contract_case(reg):
    assert reg.kind in CASES, f"registry '{reg.kind}' has no contract cases in this module"
    missing = sorted(set(reg.names()) - set(CASES[reg.kind]))
    assert not missing, f"{reg.kind} entries without a contract case: {missing}"


def test_the_shipped_registries_are_all_here():
    expected = {"stdcnn_mnist", "gcnn_mnist", "vgg16", "gcnn_vgg16", "resnet18", "gcnn_resnet18",
                "lenet_madry", "resnet_madry", "wrn34_10", "sgr_cnn", "mlp"}
    assert expected <= set(MODELS.names())
    assert set(METRICS.names()) >= {"accuracy", "robustness", "invariance", "hessian", "boundary_distance",
                                    "svd_universal", "invariant_directions", "perturbation_pca",
                                    "perturbation_covariance", "lrc_noise"}
    assert set(ATTACKS.names()) == set(ATTACK_CASES)
    assert len(registry.ALL) == len(CASES) + len(ELSEWHERE)
