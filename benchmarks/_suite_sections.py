"""The sections of benchmarks/gpu_suite.py (see its docstring); each takes (ctx, deadline)."""

from __future__ import annotations

import contextlib
import gc
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import _projection as P
import _suite_data as D


@dataclass
class Context:
    args: Any
    device: torch.device
    out: Any
    root: Path
    trained: dict = field(default_factory=dict)      # name -> (model, DeviceData) for later sections
    packing: dict = field(default_factory=dict)      # k -> aggregate images/s
    plans: dict = field(default_factory=dict)        # study label -> (trials, concurrency)
    rates: dict = field(default_factory=dict)        # cost key -> images/s or None

    @property
    def smoke(self) -> bool:
        return self.args.cpu_smoke

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ------------------------------------------------------------------ timing through run_trial

class StopTiming(Exception):
    """Raised from the reporter once enough epochs are measured: ends run_trial early."""


class StepTimer:
    """A raystudy Reporter: records each epoch's training images/s (after `warmup` epochs)
    and stops the trial once `target_s` seconds are measured or the deadline passed."""

    def __init__(self, n: int, warmup: int, target_s: float, deadline: float, max_measured: int = 30):
        self.n, self.warmup, self.target_s, self.deadline = n, warmup, target_s, deadline
        self.max_measured = max_measured
        self.rates: list[float] = []

    def epoch(self, metrics: dict, get_state) -> None:
        self.rates.append(metrics.get("train_images_per_s") or metrics["images_per_s"])
        measured = self.rates[self.warmup:]
        spent = sum(self.n / r for r in measured)
        if measured and (spent >= self.target_s or len(measured) >= self.max_measured
                         or time.perf_counter() > self.deadline):
            raise StopTiming

    def final(self, metrics: dict) -> None:
        pass

    def restore(self):
        return None

    def rate(self) -> float | None:
        measured = self.rates[self.warmup:]
        return statistics.median(measured) if measured else None


_bundles: dict = {}


def synthetic_bundle(dataset: str, n_train: int):
    key = (dataset, n_train)
    if key not in _bundles:
        _bundles.clear()
        _bundles[key] = D.bundle(dataset, n_train)
    return _bundles[key]


def trial_config(spec: dict, device: torch.device, epochs: int) -> dict:
    return {"seed": 0, "device": str(device), "data": {"dataset": spec["dataset"]},
            "model": spec["model"], "evaluate": [],
            "train": {"epochs": epochs, "batch_size": spec["batch_size"], "optimizer": spec["optimizer"],
                      "schedule": {"name": "constant"}, "method": spec["method"],
                      "augment": spec.get("augment_spec") or {}, "checkpoint_every": 0,
                      "amp": spec.get("amp", False), "channels_last": spec.get("channels_last", False)}}


def time_training(ctx: Context, spec: dict, deadline: float) -> tuple[float | None, str]:
    """Training images/s of one model + method + batch size via run_trial on a synthetic set
    of a few batches per epoch: one warm-up epoch, then epochs until ~1 s is measured (one
    epoch of one step in smoke mode). Returns (images/s or None, note)."""
    from raystudy.execute import run_trial
    # Steps per epoch: fit syncs with the device once an epoch, so fast MNIST models get more.
    steps = 1 if ctx.smoke else (40 if spec["dataset"] == "mnist" else 10)
    if ctx.smoke:
        spec = {**spec, "batch_size": min(spec["batch_size"], 32)}
    n = steps * spec["batch_size"]
    timer = StepTimer(n, warmup=0 if ctx.smoke else 1, target_s=0.0 if ctx.smoke else 1.0, deadline=deadline)
    trial = {"trial_id": "gpu_suite", "params": {}, "config": trial_config(spec, ctx.device, 10_000)}
    try:
        run_trial(trial, synthetic_bundle(spec["dataset"], n), timer)
    except StopTiming:
        pass
    except Exception as e:  # noqa: BLE001 - a model that cannot run here is a note, not a crash
        return None, f"not timed: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:120]}"
    finally:
        free_memory(ctx.device)
    r = timer.rate()
    return r, (f"median of {len(timer.rates) - timer.warmup} epochs of {steps} steps" if r else "not timed: deadline")


# ------------------------------------------------------------------ a trained model

def train_model(ctx: Context, arch: str, n_train: int, model_opts: dict | None = None):
    """A model trained for 2 epochs on synthetic MNIST through run_trial (Adam 1e-3, batch
    128), and its data on the device."""
    from raystudy.execute import NullReporter, run_trial
    bundle = D.bundle("mnist", n_train, n_val=64, n_test=10_000 if not ctx.smoke else 128, seed=1)
    spec = {"dataset": "mnist", "model": {"arch": arch, **(model_opts or {})}, "batch_size": 128,
            "optimizer": {"name": "adam", "lr": 0.001}, "method": {"name": "natural"}}
    box: dict = {}
    run_trial({"trial_id": "gpu_suite", "params": {}, "config": trial_config(spec, ctx.device, 2)},
              bundle, NullReporter(), on_model=lambda m: box.setdefault("model", m))
    return box["model"].eval(), bundle.to(ctx.device)


def small(ctx: Context) -> dict:
    return {"channels": [8, 8, 16, 16], "hidden": 32} if ctx.smoke else {}


# ------------------------------------------------------------------ sections

def _attack_rate(ctx, model, x, y, bf16: bool, min_time: float) -> tuple[float, float]:
    """(images/s, robust accuracy) of PGD-40 at ε 0.3 on x, optionally under bf16 autocast:
    one untimed warm-up on a slice, then whole runs until `min_time` seconds are measured."""
    from raystudy.attacks import attack
    steps = 2 if ctx.smoke else 40

    def once(xs, ys):
        cast = torch.autocast(ctx.device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with cast:
            return attack(model, "pgd", xs, ys, eps=0.3, steps=steps, alpha=0.01, batch_size=1000)

    once(x[:100], y[:100])
    runs, spent, adv = 0, 0.0, None
    while runs == 0 or spent < min_time:
        ctx.sync()
        t0 = time.perf_counter()
        adv = once(x, y)
        ctx.sync()
        spent += time.perf_counter() - t0
        runs += 1
    with torch.no_grad():
        acc = (model(adv).argmax(1) == y).float().mean().item()
    return runs * len(x) / spent, acc


def section_pgd(ctx: Context, deadline: float) -> None:
    archs = ["stdcnn_mnist", "lenet_madry"]
    for i, arch in enumerate(archs):
        if time.perf_counter() > deadline:
            ctx.out.fig(f"pgd40.{arch}.skipped", 1, "", "section budget spent")
            continue
        opts = small(ctx) if arch == "stdcnn_mnist" else ({"channels": [4, 8], "hidden": 16} if ctx.smoke else {})
        model, data = train_model(ctx, arch, 512 if ctx.smoke else 12_800, opts)
        ctx.trained.setdefault("stdcnn", (model, data))
        x, y = data.x_test, data.y_test
        # Each precision: 2 s of runs, or a third of this model's share of what is left.
        share = (deadline - time.perf_counter()) / (len(archs) - i) / 3
        min_time = 0.0 if ctx.smoke else max(0.2, min(2.0, share))
        fp32, acc32 = _attack_rate(ctx, model, x, y, bf16=False, min_time=min_time)
        bf16, acc16 = _attack_rate(ctx, model, x, y, bf16=True, min_time=min_time)
        note = f"{len(x)} images, eps 0.3, {2 if ctx.smoke else 40} steps of 0.01, raystudy.attacks.attack"
        ctx.out.fig(f"pgd40.{arch}.fp32", fp32, "images/s", note)
        ctx.out.fig(f"pgd40.{arch}.bf16", bf16, "images/s", note + " under torch.autocast(bfloat16)")
        ctx.out.fig(f"pgd40.{arch}.bf16_speedup", bf16 / fp32, "x")
        ctx.out.fig(f"pgd40.{arch}.robust_accuracy_fp32", acc32, "")
        ctx.out.fig(f"pgd40.{arch}.robust_accuracy_bf16", acc16, "", "same images, same random start")


def section_hessian(ctx: Context, deadline: float) -> None:
    from raystudy.metrics.base import EvalContext
    from raystudy.metrics.hessian import HessianOptions, hessian
    if "stdcnn" not in ctx.trained:
        ctx.trained["stdcnn"] = train_model(ctx, "stdcnn_mnist", 512 if ctx.smoke else 12_800, small(ctx))
    model, data = ctx.trained["stdcnn"]
    ectx = EvalContext(model, data, ctx.device)
    samples, bs = (64, 32) if ctx.smoke else (1024, 256)
    runs = [("top1", dict(max_iter=5 if ctx.smoke else 100, tol=1e-3)),
            ("hvp", dict(max_iter=3 if ctx.smoke else 20, tol=1e-12))]
    for label, it in runs:
        if time.perf_counter() > deadline:
            ctx.out.fig(f"hessian.{label}.skipped", 1, "", "section budget spent")
            continue
        o = HessianOptions(top_n=1, trace=False, samples=samples, batch_size=bs, split="train", **it)
        ctx.sync()
        t0 = time.perf_counter()
        res = hessian(ectx, o).scalars
        ctx.sync()
        dt = time.perf_counter() - t0
        if label == "top1":
            ctx.out.fig("hessian.top1_s", dt, "s", f"stdcnn_mnist, {samples} samples in batches of {bs}, "
                        f"max_iter {o.max_iter}, tol 1e-3 (sgd_hparams' settings); "
                        f"top1 {res['hessian.top1']:.4g}, residual {res['hessian.top1_residual']:.2g}")
        else:
            # max_iter power-iteration HVPs plus one for the residual.
            ctx.out.fig("hessian.hvp_ms", 1000 * dt / (o.max_iter + 1), "ms",
                        f"one Hessian-vector product over {samples} samples ({o.max_iter} iterations forced)")


def section_knobs(ctx: Context, deadline: float) -> None:
    base = [("stdcnn_mnist", {"dataset": "mnist", "model": {"arch": "stdcnn_mnist", **small(ctx)}}),
            ("vgg16", {"dataset": "cifar10", "model": {"arch": "vgg16"}})]
    variants = [("fp32", {}, False), ("amp", {"amp": True}, False),
                ("amp_channels_last", {"amp": True, "channels_last": True}, False),
                ("amp_channels_last_cudnn_benchmark", {"amp": True, "channels_last": True}, True)]
    for name, b in base[:1] if ctx.smoke else base:
        fp32 = None
        for label, knobs, bench in variants:
            if time.perf_counter() > deadline:
                ctx.out.fig(f"knobs.{name}.{label}.skipped", 1, "", "section budget spent")
                continue
            spec = {**b, "batch_size": 128, "optimizer": {"name": "sgd", "lr": 0.01},
                    "method": {"name": "natural"}, **knobs}
            was = torch.backends.cudnn.benchmark
            torch.backends.cudnn.benchmark = bench
            try:
                rate, note = time_training(ctx, spec, deadline)
            finally:
                torch.backends.cudnn.benchmark = was
            if rate is None:
                ctx.out.fig(f"knobs.{name}.{label}.skipped", 1, "", note)
                continue
            fp32 = fp32 or rate
            ctx.out.fig(f"knobs.{name}.{label}", rate, "images/s",
                        f"natural, batch 128; {rate / fp32:.2f}x fp32; {note}")


def _load(ctx: Context, entry: str):
    from raystudy.spec.load import load_study
    name, _, profile = entry.partition(":")
    return load_study(ctx.root / "studies" / f"{name}.yaml", smoke=ctx.smoke, profile=profile or None)


def _label(info: dict) -> str:
    """A readable name for a cost key: arch.method[steps][_variant][_eps0].bsN[.aug]."""
    m = info["method"]
    name = m["name"] + (f"{m['steps']}" if "steps" in m and m["name"] != "natural" else "")
    for k in ("attack", "source", "inner"):
        if k in m:
            name += f"_{m[k]}"
    if P.method_key(m).get("eps") == 0:
        name += "_eps0"
    parts = [info["model"]["arch"], name, f"bs{info['batch_size']}"] + (["aug"] if info["augment"] else [])
    return ".".join(parts)


def section_projection(ctx: Context, deadline: float) -> None:
    gpus = 1 if ctx.device.type == "cuda" else 0
    print(f"# projection: {P.WALL_FORMULA}, epoch_s = full training images / measured images/s; "
          f"{P.CONCURRENCY_FORMULA}; training only (evaluation not included); wall_packed divides "
          "by the measured packing speed-up instead of the concurrency", flush=True)
    ctx.out.data["projection_formula"] = {"wall": P.WALL_FORMULA, "concurrency": P.CONCURRENCY_FORMULA,
                                          "wall_packed": "sum of epochs * epoch_s / packing speed-up at the concurrency"}
    cpus = os.cpu_count() or 1
    for entry in ctx.args.studies:
        try:
            study = _load(ctx, entry)
        except Exception as e:  # noqa: BLE001 - one study that does not load must not stop the others
            ctx.out.fig(f"projected.{entry.replace(':', '@')}.skipped", 1, "", f"{type(e).__name__}: {str(e)[:160]}")
            continue
        configs = [t.config for t in study.trials]
        keys, trials = P.plan(configs, D.full_train_size)
        res = study.spec.resources
        conc = P.concurrency(res.cpu, res.gpu if gpus else 0, study.spec.tune.max_concurrent, len(trials),
                             gpus, cpus)
        label = entry.replace(":", "@")
        ctx.plans[label] = (trials, conc)
        n_full = D.full_train_size(configs[0].get("data", {}))
        for key, info in keys.items():
            if key in ctx.rates:
                if ctx.rates[key]:
                    ctx.out.fig(f"epoch.{label}.{_label(info)}", n_full / ctx.rates[key], "s", "timed above")
                continue
            # A key needs a model build, a warm-up epoch and a measured one: one started with
            # less than 10 s left could overrun the suite's limit (an escnn VGG takes ~10 s to build).
            if deadline - time.perf_counter() < (0 if ctx.smoke else 10):
                ctx.rates[key] = None
                ctx.out.fig(f"epoch.{label}.{_label(info)}.skipped", 1, "", "section budget spent")
                continue
            rate, note = time_training(ctx, info, deadline)
            ctx.rates[key] = rate
            if rate:
                ctx.out.fig(f"epoch.{label}.{_label(info)}", n_full / rate, "s",
                            f"{rate:.0f} images/s x {n_full} images; {note}")
            else:
                ctx.out.fig(f"epoch.{label}.{_label(info)}.skipped", 1, "", note)
        report_projection(ctx, label, packed=False)
        if ctx.packing:
            report_projection(ctx, label, packed=True)


def report_projection(ctx: Context, label: str, packed: bool) -> None:
    trials, conc = ctx.plans[label]
    speed = P.packing_speedup(ctx.packing, conc) if packed else None
    pr = P.project(trials, ctx.rates, conc, speed)
    what = f"{pr['trials']} trials, {pr['epochs']} trial-epochs, concurrency {conc}"
    if pr["wall_s"] is None and not packed:
        ctx.out.fig(f"projected.{label}.incomplete", pr["untimed_keys"], "untimed keys", what)
    elif packed and pr["wall_packed_s"] is not None:
        ctx.out.fig(f"projected.{label}.wall_packed", pr["wall_packed_s"] / 3600, "h",
                    f"{what}; GPU-alone hours / measured packing speed-up {speed:.2f}x at {conc} per GPU")
    elif not packed:
        ctx.out.fig(f"projected.{label}.wall", pr["wall_s"] / 3600, "h",
                    f"{what}; GPU-alone {pr['gpu_s_alone'] / 3600:.3g} h / concurrency; training only")


def section_packing(ctx: Context, deadline: float) -> None:
    import _suite_packing as K
    K.run(ctx, deadline)
