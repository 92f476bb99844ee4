"""Packing section of benchmarks/gpu_suite.py: k StdCNN trials sharing one GPU.

Ray mode: a real raystudy study of k seeds (`resources: {cpu: 1, gpu: 1/k}`) run by
`raystudy.runner.run_study`, reading synthetic digits written in torchvision's MNIST format
through raystudy's own `mnist` loader (60,000 training files, 54,000 after the validation
split). Aggregate images/s = the sum over the k trials of each trial's median training
images/s over its epochs after the first (while all k train side by side); the wall-clock
figure k x epochs x images / study wall time, Ray's trial start-up included, is printed next
to it. Processes mode (no Ray here): k spawned processes each run `run_trial` on the same
data, released together by a barrier once their models are built.
"""

from __future__ import annotations

import multiprocessing as mp
import statistics
import tempfile
import time
from pathlib import Path

import _suite_data as D


def study_doc(k: int, epochs: int, root: Path, smoke: bool, gpu: bool) -> dict:
    data = {"dataset": "mnist", "source": "torchvision", "root": str(root), "val_fraction": 0.1}
    model = {"arch": "stdcnn_mnist"}
    if smoke:
        data.update(train_size=256, test_size=64)
        model.update(channels=[8, 8, 16, 16], hidden=32)
    return {"name": f"pack{k}", "data": data, "model": model,
            "train": {"epochs": epochs, "batch_size": 128, "optimizer": {"name": "adam", "lr": 0.001},
                      "checkpoint_every": 0},
            "evaluate": [], "space": {"seed": {"grid": list(range(k))}},
            "resources": {"cpu": 1, "gpu": 1 / k if gpu else 0}}


def run_ray(k: int, epochs: int, root: Path, smoke: bool, gpu: bool) -> tuple[list[list[float]], float]:
    """Per-trial lists of training images/s by epoch, and the study's wall time."""
    import pandas as pd

    from raystudy.runner import run_study
    from raystudy.spec.load import load_document
    study = load_document(study_doc(k, epochs, root, smoke, gpu))
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        run_study(study, d, dashboard=False, verbose=False)
        wall = time.perf_counter() - t0
        ep = pd.read_parquet(Path(d) / study.name / "epochs.parquet")
    col = "train_images_per_s" if "train_images_per_s" in ep else "images_per_s"
    rates = [g.sort_values("epoch")[col].tolist() for _, g in ep.groupby("trial_id")]
    return rates, wall


def _proc_trial(cfg: dict, barrier, queue) -> None:
    import torch

    from raystudy.data import load
    from raystudy.execute import NullReporter, run_trial
    from raystudy.spec.schema import DataSpec
    torch.set_num_threads(1)
    rep = NullReporter()
    try:
        run_trial({"trial_id": "pack", "params": {}, "config": cfg}, load(DataSpec.model_validate(cfg["data"])),
                  rep, on_model=lambda m: barrier.wait(timeout=300))
        queue.put([e.get("train_images_per_s") or e["images_per_s"] for e in rep.epochs])
    except Exception as e:  # noqa: BLE001 - reported by the parent
        queue.put(f"{type(e).__name__}: {e}")


def run_processes(k: int, epochs: int, root: Path, smoke: bool, gpu: bool) -> tuple[list[list[float]], float]:
    doc = study_doc(k, epochs, root, smoke, gpu)
    cfg = {key: doc[key] for key in ("data", "model", "train", "evaluate")}
    cfg["device"] = "cuda" if gpu else "cpu"
    spawn = mp.get_context("spawn")
    barrier, queue = spawn.Barrier(k), spawn.Queue()
    t0 = time.perf_counter()
    procs = [spawn.Process(target=_proc_trial, args=({**cfg, "seed": i}, barrier, queue)) for i in range(k)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=900) for _ in procs]
    for p in procs:
        p.join()
    bad = [r for r in results if isinstance(r, str)]
    if bad:
        raise RuntimeError(bad[0])
    return results, time.perf_counter() - t0


def _mode(ctx) -> str:
    if ctx.args.pack_mode != "auto":
        return ctx.args.pack_mode
    try:
        import ray  # noqa: F401
        return "ray"
    except ImportError:
        return "processes"


def run(ctx, deadline: float) -> None:
    mode = _mode(ctx)
    gpu = ctx.device.type == "cuda"
    n_files = (1_000, 200) if ctx.smoke else (60_000, 10_000)
    n_train = 256 if ctx.smoke else round(n_files[0] * 0.9)
    with tempfile.TemporaryDirectory() as tmp:
        root = D.write_mnist_files(Path(tmp), *n_files)
        if mode == "ray":
            mode = _start_ray(ctx)
        try:
            _measure(ctx, deadline, mode, root, n_train, gpu)
        finally:
            import sys
            if "ray" in sys.modules:
                sys.modules["ray"].shutdown()


def _start_ray(ctx) -> str:
    """Start a local Ray; in auto mode a Ray that does not start falls back to processes."""
    from raystudy.runner import init_ray
    t0 = time.perf_counter()
    try:
        init_ray(dashboard=False)
    except Exception as e:  # noqa: BLE001 - Ray's start-up errors have no common type
        if ctx.args.pack_mode == "ray":
            raise
        ctx.out.fig("pack.ray_failed", 1, "", f"falling back to processes: {type(e).__name__}: {str(e)[:160]}")
        return "processes"
    ctx.out.fig("pack.ray_init_s", time.perf_counter() - t0, "s", "local Ray, no dashboard")
    return "ray"


def _plan_epochs(k: int, t_epoch: float, overhead: float, left: float, smoke: bool) -> int:
    """Epochs per trial for k trials so that the run fits `left` seconds even if k trials
    on one GPU are no faster together than one alone (0: it does not fit)."""
    if smoke:
        return 2 if left > overhead + 2 * k * t_epoch else 0
    for epochs in (5, 4, 3, 2):
        if overhead + epochs * k * t_epoch <= left:
            return epochs
    return 0


def _measure(ctx, deadline: float, mode: str, root: Path, n_train: int, gpu: bool) -> None:
    runner = run_ray if mode == "ray" else run_processes
    t_epoch = overhead = None
    packs = list(ctx.args.packs)
    for i, k in enumerate(packs):
        left = deadline - time.perf_counter()
        if t_epoch is None:
            epochs = 2 if ctx.smoke else 3
        else:
            # This packing's share of what is left, in proportion to k (its worst-case cost).
            share = left * k / sum(packs[i:])
            epochs = _plan_epochs(k, t_epoch, overhead, share, ctx.smoke)
        if epochs == 0 or left <= 0:
            ctx.out.fig(f"pack.k{k}.skipped", 1, "", f"section budget: {left:.0f} s left")
            continue
        rates, wall = runner(k, epochs, root, ctx.smoke, gpu)
        steady = [statistics.median(r[1:] or r) for r in rates]
        agg = sum(steady)
        if t_epoch is None:
            t_epoch = n_train / steady[0]
            overhead = max(0.0, wall - epochs * t_epoch)
        ctx.packing[k] = agg
        note = (f"{mode}: {k} trial(s) x {epochs} epochs of {n_train} images, gpu {1 / k:.3g} each"
                if gpu else f"{mode}: {k} trial(s) x {epochs} epochs of {n_train} images, CPU")
        ctx.out.fig(f"pack.k{k}.aggregate_images_per_s", agg, "images/s", note + "; sum of per-trial medians")
        ctx.out.fig(f"pack.k{k}.per_trial_images_per_s", agg / k, "images/s")
        ctx.out.fig(f"pack.k{k}.wall_images_per_s", k * epochs * n_train / wall, "images/s",
                    f"incl. trial start-up; study wall {wall:.1f} s")
        if 1 in ctx.packing:
            ctx.out.fig(f"pack.k{k}.speedup", agg / ctx.packing[1], "x", "aggregate over one trial's")
