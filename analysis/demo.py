"""Write a small synthetic results folder in the real table format (through ResultStore).

For tests, the notebooks and trying chart declarations without training anything.
Values follow simple formulas (plus seeded noise) so tests can predict them:
  accuracy            = 0.98 - 0.10·[pgd_at] - 0.0002·rotation + noise
  robustness.pgd      accuracy at ε: accuracy · max(0, 1 - ε / (0.05 + 0.25·[pgd_at]))
  invariance.rotation accuracy at θ: accuracy · (1 - 0.5·θ/180 · (1 - rotation/180))
  spatial_attack.surface@ε  accuracy at (θ, ε): accuracy · (1 - |θ|/60 · (1 - rotation/180)) ·
                      max(0, 1 - ε / (0.05 + 0.25·[pgd_at]))
  hessian.top1        = 20 · (1 + [pgd_at]) + noise; hessian.density: a Gaussian bump at top1
  corruption.*        accuracy at severity s: brightness accuracy · (1 - 0.03·s), rotate
                      accuracy · (1 - 0.12·s·(1 - rotation/180)), mean: their mean
Curve points carry n = 500 images and their Wilson intervals, as the metric template writes them.
Health: every trial is judged; `UNHEALTHY` (PGD-AT without rotation, seed 1) fails
`robustness.pgd.gradient_free_gap` (its value 0.12, the others 0.0).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from raystudy.results import PLAN, ResultStore, write_atomic, write_json_atomic
from raystudy.stats import add_intervals

EPS = [0.0, 2 / 255, 4 / 255, 8 / 255, 0.1, 0.2]
THETAS = [0.0, 30.0, 90.0, 180.0]
N_IMAGES = 500
UNHEALTHY = "pgd000s1"
REPORT = [
    {"chart": "bar", "x": "train.augment.rotation", "y": "accuracy", "color": "train.method.name"},
    {"chart": "profile", "metric": "robustness.pgd", "color": "train.method.name", "column": "train.augment.rotation"},
    {"chart": "profile", "metric": "invariance.rotation", "color": "train.augment.rotation"},
    {"chart": "line", "x": "train.augment.rotation", "y": "hessian.top1", "color": "train.method.name"},
    {"chart": "heatmap", "x": "train.augment.rotation", "y": "train.method.name", "value": "accuracy"},
    {"chart": "pareto", "x": "invariance.rotation@180", "y": "robustness.pgd@8/255", "maximize": ["accuracy"]},
    {"chart": "pareto", "x": "invariance.rotation@180", "y": "robustness.pgd@8/255"},
    {"chart": "density", "color": "train.method.name"},
    {"chart": "transfer"},
    {"chart": "cusp_table"},
    {"chart": "epochs", "y": "val_accuracy", "color": "train.method.name"},
]


def demo_trials(seeds=(0, 1, 2), methods=("natural", "pgd_at"), rotations=(0, 180)) -> list[dict]:
    out = []
    for m in methods:
        for r in rotations:
            for s in seeds:
                params = {"train.method.name": m, "train.augment.rotation": r, "seed": s}
                tid = f"{m[:3]}{r:03d}s{s}"
                cfg = {"seed": s, "model": {"arch": "stdcnn_mnist"}, "data": {"dataset": "mnist"},
                       "train": {"method": {"name": m}, "augment": {"rotation": r},
                                         "optimizer": {"name": "sgd", "momentum": 0.9}}}
                out.append({"trial_id": tid, "params": params, "config": cfg})
    return out


def demo_values(trial: dict, rng: np.random.Generator) -> tuple[dict, list[dict], list[dict]]:
    p = trial["params"]
    adv = p["train.method.name"] == "pgd_at"
    rot = p["train.augment.rotation"]
    acc = 0.98 - 0.10 * adv - 0.0002 * rot + rng.normal(0, 0.005)
    top1 = 20.0 * (1 + adv) + rng.normal(0, 1.0)
    curves = [{"metric": "robustness.pgd", "x": e, "x_title": "ε (L∞ pixel units)",
               "accuracy": acc * max(0.0, 1 - e / (0.05 + 0.25 * adv)),
               "consistency": max(0.0, 1 - e / (0.05 + 0.25 * adv))} for e in EPS]
    curves += [{"metric": "invariance.rotation", "x": t, "x_title": "θ (degrees)",
                "accuracy": acc * (1 - 0.5 * t / 180 * (1 - rot / 180)),
                "consistency": 1 - 0.5 * t / 180 * (1 - rot / 180)} for t in THETAS]
    # spatial_attack.surface@<ε>: accuracy after a rotation by θ then PGD at ε (x = θ, column eps).
    curves += [{"metric": f"spatial_attack.surface@{e:g}", "x": t,
                "x_title": "rotation θ (degrees), then L∞ PGD at ε", "eps": e,
                "accuracy": acc * (1 - abs(t) / 60 * (1 - rot / 180)) * max(0.0, 1 - e / (0.05 + 0.25 * adv))}
               for t in (-30.0, 0.0, 30.0) for e in (0.0, 0.1)]
    # Common corruptions (metrics/corruption.py): brightness costs every model a little, rotation
    # costs a model trained without rotations much more.
    drop = {"brightness": lambda s: 0.03 * s, "rotate": lambda s: 0.12 * s * (1 - rot / 180)}
    for s in range(6):
        accs = {k: acc * (1 - f(s)) for k, f in drop.items()}
        accs["mean"] = sum(accs.values()) / len(drop)
        curves += [{"metric": f"corruption.{k}", "x": s, "x_title": "severity", "accuracy": a,
                    "consistency": 1 - (acc - a)} for k, a in accs.items()]
    curves = [add_intervals(c, N_IMAGES) for c in curves]
    grid = np.linspace(-5, 60, 66)
    dens = 0.95 * np.exp(-grid ** 2 / 2) / np.sqrt(2 * np.pi) + 0.05 * np.exp(-(grid - top1) ** 2 / 2) / np.sqrt(2 * np.pi)
    curves += [{"metric": "hessian.density", "x": float(g), "x_title": "eigenvalue", "density": float(d)}
               for g, d in zip(grid, dens)]
    bad = trial["trial_id"] == UNHEALTHY
    result = {"accuracy": acc, "accuracy.val": acc - 0.01, "hessian.top1": top1, "wall_time_s": 5.0,
              "final": True, "_curves": json.dumps(curves), "health.did_not_learn_loss_ratio": 0.3,
              "health.robustness.pgd.gradient_free_gap": 0.12 if bad else 0.0, "health.ok": not bad,
              "health.flags": "robustness.pgd.gradient_free_gap" if bad else ""}
    epochs = [{"epoch": k, "loss": 2.0 / k, "val_accuracy": acc * (1 - 0.3 / k), "lr": 0.001} for k in (1, 2, 3)]
    return result, curves, epochs


def write_demo_results(out: str | Path, *, name: str = "demo", report: list[dict] | None = None,
                       failed: int = 1, pending: int = 1, seed: int = 0, **grid) -> Path:
    """A results folder like `raystudy run` writes: some trials completed, `failed` recorded as
    errors, `pending` only in the plan (as in a study that is still running)."""
    out = Path(out)
    trials = demo_trials(**grid)
    write_json_atomic({"name": name, "description": "synthetic results (analysis.demo)",
                       "report": REPORT if report is None else report, "trials": trials}, out / PLAN)
    store = ResultStore(out)
    rng = np.random.default_rng(seed)
    n_done = len(trials) - failed - pending
    for i, t in enumerate(trials[:n_done + failed]):
        if i < n_done:
            result, _, epochs = demo_values(t, rng)
            store.record(t, "completed", result, epochs=epochs)
        else:
            store.record(t, "error", None, error="FloatingPointError: loss is nan at epoch 2", epochs=[])
    done = [t["trial_id"] for t in trials[:n_done]]
    # The layout of raystudy.poststeps' transfer step: one row per (source, target, attack, eps).
    rows = [{"source_trial": a, "target_trial": b, "attack": atk, "eps": 0.1,
             "accuracy": 0.2 + 0.6 * (a == b) + 0.01 * i - 0.1 * (atk == "pgd")}
            for atk in ("pgd", "fgsm") for i, a in enumerate(done[:4]) for b in done[:4]]
    write_atomic(pd.DataFrame(rows), out / "transfer.parquet")
    return out
