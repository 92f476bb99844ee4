"""benchmarks/gpu_suite.py: its projection arithmetic, its synthetic data, and a CPU smoke run
(so the suite, meant for a GPU machine, never rots)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import _projection as P  # noqa: E402
import _suite_data as D  # noqa: E402


def cfg(method=None, stages=None, bs=64, model="stdcnn_mnist", aug=None, dataset="mnist"):
    train = {"epochs": 10, "batch_size": bs, "method": method or {"name": "natural"},
             "optimizer": {"name": "adam", "lr": 1e-3}, "augment": aug or {}}
    if stages:
        train["stages"] = stages
    return {"data": {"dataset": dataset, "val_fraction": 0.1}, "model": {"arch": model}, "train": train}


def test_cost_key_keeps_what_changes_the_work_and_drops_what_does_not():
    pgd = {"name": "pgd_at", "eps": 0.3, "step_size": 0.01, "steps": 40}
    key = lambda c: P.cost_key(c, P.stages(c)[0])  # noqa: E731
    assert key(cfg(pgd)) == key(cfg({**pgd, "eps": 0.1, "step_size": 0.02}))
    assert key(cfg(pgd)) != key(cfg({**pgd, "steps": 10}))
    assert key(cfg(pgd)) != key(cfg({**pgd, "eps": 0}))           # ε = 0 skips the attack
    assert key(cfg(pgd)) != key(cfg(pgd, bs=128))
    assert key(cfg()) != key(cfg(aug={"rotation": 90}))
    assert key(cfg(aug={"rotation": 90})) == key(cfg(aug={"rotation": 180}))
    assert P.method_key({"name": "cusp", "eps": ["2/255", "8/255"], "steps": 10}) == {"name": "cusp", "steps": 10}


def test_stages_of_a_plain_and_a_staged_trial():
    assert P.stages(cfg()) == [{"epochs": 10, "method": {"name": "natural"}, "augment": {}}]
    st = P.stages(cfg(stages=[{"epochs": 3, "method": {"name": "pgd_at", "steps": 5}}, {"epochs": 2}]))
    assert [s["epochs"] for s in st] == [3, 2]
    assert st[1]["method"] == {"name": "natural"}   # a stage without a method takes train.method


def test_concurrency_on_one_gpu():
    assert P.concurrency(1, 0.25, None, 72, gpus=1, cpus=16) == 4
    assert P.concurrency(2, 0.5, None, 30, gpus=1, cpus=16) == 2
    assert P.concurrency(4, 1, None, 10, gpus=1, cpus=16) == 1
    assert P.concurrency(1, 0.125, None, 72, gpus=1, cpus=4) == 4     # CPUs bind
    assert P.concurrency(1, 0.125, 3, 72, gpus=1, cpus=16) == 3      # tune.max_concurrent binds
    assert P.concurrency(1, 0.125, None, 2, gpus=1, cpus=16) == 2     # fewer trials than slots
    assert P.concurrency(1, 0, None, 8, gpus=0, cpus=2) == 2          # CPU-only study


def test_projection_arithmetic():
    a, b = "A", "B"
    trials = [[(a, 10, 1000)], [(a, 5, 1000), (b, 5, 1000)]]
    rates = {a: 100.0, b: 50.0}
    # 10·1000/100 + 5·1000/100 + 5·1000/50 = 100 + 50 + 100 s of GPU time alone.
    pr = P.project(trials, rates, conc=2)
    assert pr["gpu_s_alone"] == pytest.approx(250) and pr["wall_s"] == pytest.approx(125)
    assert pr["epochs"] == 20 and pr["trials"] == 2 and pr["untimed_keys"] == 0
    assert P.project(trials, rates, conc=2, speedup=1.6)["wall_packed_s"] == pytest.approx(250 / 1.6)
    missing = P.project(trials, {a: 100.0}, conc=2)
    assert missing["wall_s"] is None and missing["untimed_keys"] == 1


def test_packing_speedup_uses_the_largest_measured_packing_not_above_the_concurrency():
    agg = {1: 100.0, 2: 180.0, 4: 300.0}
    assert P.packing_speedup(agg, 1) == 1.0
    assert P.packing_speedup(agg, 3) == pytest.approx(1.8)
    assert P.packing_speedup(agg, 8) == pytest.approx(3.0)
    assert P.packing_speedup({2: 180.0}, 2) is None


def test_plan_of_the_cusp_study_counts_every_stage():
    from raystudy.spec.load import load_study
    study = load_study(ROOT / "studies" / "cusp.yaml")
    keys, trials = P.plan([t.config for t in study.trials], D.full_train_size)
    assert len(trials) == 10
    # Ten rows: six of one 120-epoch stage, four of two.
    assert sum(ep for row in trials for _, ep, _ in row) == 14 * 120
    assert {n for row in trials for _, _, n in row} == {49_000}          # CIFAR-10, 2% validation
    assert {json.loads(k)["method"]["name"] for k in keys} == {"natural", "pgd_at", "cusp"}


def test_synthetic_mnist_files_load_through_raystudys_mnist_loader(tmp_path):
    from raystudy.data import load
    from raystudy.spec.schema import DataSpec
    D.write_mnist_files(tmp_path, 300, 50)
    b = load(DataSpec(dataset="mnist", source="torchvision", root=str(tmp_path), val_fraction=0.1))
    assert b.x_train.shape == (270, 1, 28, 28) and b.x_test.shape == (50, 1, 28, 28)
    x, y = D.images(350, (1, 28, 28), 10)
    assert b.x_test.dtype == x.dtype == D.torch.uint8
    assert (x == 0).float().mean() > 0.5          # mostly black, as MNIST
    assert set(y.tolist()) == set(range(10))
    assert D.full_train_size({"dataset": "mnist", "val_fraction": 0.1}) == 54_000


def test_budget_passes_unused_time_on():
    import gpu_suite as G
    budget = G.Budget(G.time.perf_counter() - G.T_START + 100.0, {"a": 0.25, "b": 0.75})
    now = time.perf_counter()
    assert budget.section("a") - now == pytest.approx(25, abs=0.5)
    assert budget.section("b") - now == pytest.approx(100, abs=0.5)   # all that is left


@pytest.mark.slow
def test_gpu_suite_cpu_smoke(tmp_path):
    out = tmp_path / "suite.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_suite.py"), "--cpu-smoke",
                           "--out", str(out)], capture_output=True, text=True, env=env, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["header"]["mode"] == "cpu-smoke" and data["header"]["device"].startswith("cpu")
    assert all(s["status"] == "ok" for s in data["sections"].values()), data["sections"]
    names = {f["name"] for f in data["figures"]}
    for prefix in ("pgd40.stdcnn_mnist.fp32", "pgd40.stdcnn_mnist.bf16", "hessian.top1_s", "hessian.hvp_ms",
                   "knobs.stdcnn_mnist.amp", "epoch.sgd_hparams.", "projected.cusp.wall",
                   "pack.k1.aggregate_images_per_s", "projected.sgr.wall_packed"):
        assert any(n.startswith(prefix) for n in names), prefix
    # Every figure is also one `name=value unit` line on stdout.
    assert "pgd40.stdcnn_mnist.fp32=" in proc.stdout and "suite.wall_s=" in proc.stdout
