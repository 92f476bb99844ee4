"""Study overhead: wall time of a study of N trivial trials vs N x one trial's own time, and
Ray Tune's own floor measured in the same run.

A trivial trial: synthetic 12x12 data, a tiny CNN, one epoch on 256 images, accuracy.
Prints, for N in (1, 4, 16, 64): the study's wall time, the summed in-trial time, the
ideal wall time on this machine's CPUs (sum / concurrency), and the overhead per trial.
Ray's floor: N trivial function trials straight through Ray Tune (import torch, one
forward/backward, 1 CPU each, as many at a time as the study runs, reused actors), with
the same overhead rule, N the largest study's by default. The ratio compares raystudy's
overhead per trial at the largest N with that floor at the same N. `--fresh` adds both with a fresh worker process per trial
(`tune.reuse_workers: false`, `reuse_actors=False`). The last line:
`overhead_per_trial_s=<value>` (raystudy, reused workers, largest N).

Run: .venv/bin/python benchmarks/bench_study_overhead.py [--ns 1 4 16 64] [--floor-n N] [--fresh]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, table  # noqa: E402


def doc(n: int, reuse: bool) -> dict:
    return {
        "name": f"overhead_{n}",
        "data": {"dataset": "synthetic", "train_size": 256, "test_size": 128},
        "model": {"arch": "stdcnn_mnist", "channels": [4, 4, 8, 8], "hidden": 16},
        "train": {"epochs": 1, "batch_size": 64, "optimizer": {"name": "sgd", "lr": 0.1}},
        "evaluate": ["accuracy"],
        "space": {"seed": {"grid": list(range(n))}},
        "resources": {"cpu": 1},
        "tune": {"reuse_workers": reuse},
    }


def _row(label: str, n: int, wall: float, inside: float, cpus: int) -> dict:
    ideal = inside / min(cpus, n)
    return {"run": label, "N": n, "wall_s": f"{wall:.1f}", "sum_in_trial_s": f"{inside:.1f}",
            "ideal_wall_s": f"{ideal:.1f}", "overhead_s": f"{wall - ideal:.1f}",
            "overhead_per_trial_s": f"{(wall - ideal) / n:.2f}", "_per_trial": (wall - ideal) / n}


def study_row(n: int, reuse: bool, cpus: int) -> dict:
    import pandas as pd

    from raystudy.results import TRIALS
    from raystudy.runner import run_study
    from raystudy.spec.load import load_document
    with tempfile.TemporaryDirectory() as d:
        study = load_document(doc(n, reuse))
        t1 = time.perf_counter()
        run_study(study, d, dashboard=False, verbose=False)
        wall = time.perf_counter() - t1
        df = pd.read_parquet(Path(d) / study.name / TRIALS)
    label = "raystudy, " + ("reused workers" if reuse else "fresh workers")
    return _row(label, n, wall, float(df["wall_time_s"].sum()), cpus)


def _trivial(config):
    # What every trial pays at least: torch imported, one forward/backward, one report.
    t0 = time.perf_counter()
    import torch
    from ray import tune
    torch.set_num_threads(1)
    torch.nn.Linear(16, 4)(torch.randn(8, 16)).sum().backward()
    tune.report({"in_trial_s": time.perf_counter() - t0})


def floor_row(n: int, reuse: bool, cpus: int) -> dict:
    from ray import tune

    from raystudy.session import quiet_tune
    with tempfile.TemporaryDirectory() as d, quiet_tune():
        tuner = tune.Tuner(
            tune.with_resources(_trivial, {"cpu": 1}),
            param_space={"i": tune.grid_search(list(range(n)))},
            tune_config=tune.TuneConfig(reuse_actors=reuse),
            run_config=tune.RunConfig(name="floor", storage_path=d, verbose=0))
        t1 = time.perf_counter()
        grid = tuner.fit()
        wall = time.perf_counter() - t1
        inside = sum(r.metrics.get("in_trial_s", 0.0) for r in grid)
    label = "Ray Tune floor, " + ("reused actors" if reuse else "fresh actors")
    return _row(label, n, wall, inside, cpus)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ns", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--floor-n", type=int, default=None,
                    help="trials in Ray's floor run (default: the largest N, so both spread Tune's start alike)")
    ap.add_argument("--fresh", action="store_true", help="also measure fresh workers per trial")
    a = ap.parse_args()
    import ray

    from raystudy.session import init_ray
    print(machine())
    t0 = time.perf_counter()
    init_ray(dashboard=False)
    cpus = int(ray.cluster_resources().get("CPU", os.cpu_count() or 1))
    print(f"ray.init (local, no dashboard): {time.perf_counter() - t0:.1f} s; {cpus} CPUs")
    modes = [True, False] if a.fresh else [True]
    rows = [floor_row(a.floor_n or max(a.ns), reuse, cpus) for reuse in modes]
    floor = rows[0]["_per_trial"]
    for reuse in modes:
        rows += [study_row(n, reuse, cpus) for n in a.ns]
    print(table(rows, [c for c in rows[0] if not c.startswith("_")]))
    print("wall_s: from the loaded study (or the Tuner) to the last table write, Ray already started;\n"
          "sum_in_trial_s: data-to-device + model build + training + evaluation inside the trials;\n"
          "overhead: wall - sum_in_trial / concurrency (worker start, result transport, tables).")
    ours = [r for r in rows if r["run"] == "raystudy, reused workers"][-1]["_per_trial"]
    print(f"ratio_to_ray_floor={ours / floor:.2f} (raystudy {ours:.3f} s vs Ray {floor:.3f} s per trial)")
    print(f"overhead_per_trial_s={ours:.3f}")


if __name__ == "__main__":
    main()
