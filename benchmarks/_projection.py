"""Study wall-time projection for benchmarks/gpu_suite.py: plain arithmetic on trial configs.

A trial's cost is the sum over its training stages of epochs x (full training images /
images per second of that stage's model, method and batch size). Stages that cost the same
share one timing: the cost key keeps what changes the work per step (model, method name,
its attack steps, inner attack, source, fraction, batch size, dataset, whether the batch is
augmented, the AMP / channels_last knobs) and drops what does not (ε, step size, β, λ, the
curriculum's angles), except that ε = 0 skips the attack. Evaluation time is not included.

    study wall = Σ_trials Σ_stages epochs · epoch_s(key) / concurrency
    concurrency = min(⌊GPUs / resources.gpu⌋, ⌊CPUs / resources.cpu⌋, tune.max_concurrent, trials)

The second figure replaces `concurrency` by the measured packing speed-up (aggregate
images/s of that many StdCNN trials on one GPU over one trial's), since trials sharing a
GPU do not each run at full speed.
"""

from __future__ import annotations

import json
import math
from typing import Any

NO_COST = frozenset({"eps", "step_size", "alpha", "beta", "strength", "eps_warmup_epochs",
                     "random_start", "rotations", "milestones"})
CONCURRENCY_FORMULA = ("concurrency = min(floor(GPUs / resources.gpu), floor(CPUs / resources.cpu), "
                       "tune.max_concurrent, trials)")
WALL_FORMULA = "study wall = sum over trials and stages of epochs * epoch_s(model, method, batch) / concurrency"


def _zero(eps: Any) -> bool:
    try:
        return float(eps) == 0
    except (TypeError, ValueError):
        return False   # "8/255", or a curriculum's list of budgets


def method_key(method: dict) -> dict:
    out = {k: v for k, v in method.items() if k not in NO_COST}
    if _zero(method.get("eps")):
        out["eps"] = 0   # the attack is skipped at ε = 0
    return out


def stages(config: dict) -> list[dict]:
    """The training stages of a resolved trial config: [{epochs, method, augment}]."""
    train = config.get("train", {})
    base_aug = train.get("augment") or {}
    base_method = train.get("method") or {"name": "natural"}
    if not train.get("stages"):
        return [{"epochs": train.get("epochs", 10), "method": base_method, "augment": base_aug}]
    return [{"epochs": s["epochs"], "method": s.get("method") or base_method,
             "augment": s.get("augment") or base_aug} for s in train["stages"]]


def cost_key(config: dict, stage: dict) -> str:
    train = config.get("train", {})
    aug = stage["augment"]
    return json.dumps({
        "dataset": config.get("data", {}).get("dataset", "mnist"), "model": config["model"],
        "method": method_key(stage["method"]), "batch_size": train.get("batch_size", 128),
        "optimizer": (train.get("optimizer") or {}).get("name", "sgd"),
        "augment": bool(aug.get("rotation") or aug.get("translation") or aug.get("crop") or aug.get("flip")),
        "amp": bool(train.get("amp")), "channels_last": bool(train.get("channels_last")),
    }, sort_keys=True)


def plan(configs: list[dict], full_size) -> tuple[dict[str, dict], list[list[tuple[str, int, int]]]]:
    """Distinct cost keys (decoded) and, per trial, its stages as (key, epochs, images per epoch);
    `full_size(data_cfg)` gives the images of one full epoch."""
    keys: dict[str, dict] = {}
    trials = []
    for cfg in configs:
        n = full_size(cfg.get("data", {}))
        row = []
        for st in stages(cfg):
            k = cost_key(cfg, st)
            keys.setdefault(k, {**json.loads(k), "method": st["method"], "augment_spec": st["augment"],
                                "optimizer": cfg.get("train", {}).get("optimizer") or {"name": "sgd", "lr": 0.05}})
            row.append((k, int(st["epochs"]), n))
        trials.append(row)
    return keys, trials


def concurrency(cpu: float, gpu: float, max_concurrent: int | None, n_trials: int,
                gpus: int, cpus: int) -> int:
    limits = [max(1, n_trials), max(1, math.floor(cpus / cpu + 1e-9))]
    if gpu > 0:
        limits.append(max(1, math.floor(gpus / gpu + 1e-9)))
    if max_concurrent:
        limits.append(max_concurrent)
    return min(limits)


def packing_speedup(aggregate: dict[int, float], c: int) -> float | None:
    """Measured aggregate images/s at the largest packing k <= c, over k = 1's."""
    ks = [k for k in aggregate if k <= c and aggregate.get(k)]
    if 1 not in aggregate or not ks:
        return None
    return aggregate[max(ks)] / aggregate[1]


def project(trials: list[list[tuple[str, int, int]]], rate: dict[str, float | None], conc: int,
            speedup: float | None = None) -> dict[str, Any]:
    """Projected study time in seconds from images/s per cost key (None: not timed)."""
    total = 0.0
    missing = set()
    epochs = 0
    for row in trials:
        for key, ep, n in row:
            epochs += ep
            r = rate.get(key)
            if not r:
                missing.add(key)
                continue
            total += ep * n / r
    done = not missing
    return {"trials": len(trials), "epochs": epochs, "gpu_s_alone": total if done else None,
            "concurrency": conc, "wall_s": total / conc if done else None,
            "wall_packed_s": total / speedup if done and speedup else None,
            "untimed_keys": len(missing)}
