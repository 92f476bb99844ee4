"""Study overhead: wall time of a study of N trivial trials vs N x one trial's own time.

A trivial trial: synthetic 12x12 data, a tiny CNN, one epoch on 256 images, accuracy.
Prints, for N in (1, 4, 16, 64): the study's wall time, the summed in-trial time, the
ideal wall time on this machine's CPUs (sum / concurrency), and the overhead per trial,
plus where the time goes (Ray start, data loading, trial work, table writing).

Run: .venv/bin/python benchmarks/bench_study_overhead.py [--ns 1 4 16 64]
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


def doc(n: int) -> dict:
    return {
        "name": f"overhead_{n}",
        "data": {"dataset": "synthetic", "train_size": 256, "test_size": 128},
        "model": {"arch": "stdcnn_mnist", "channels": [4, 4, 8, 8], "hidden": 16},
        "train": {"epochs": 1, "batch_size": 64, "optimizer": {"name": "sgd", "lr": 0.1}},
        "evaluate": ["accuracy"],
        "space": {"seed": {"grid": list(range(n))}},
        "resources": {"cpu": 1},
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ns", type=int, nargs="+", default=[1, 4, 16, 64])
    a = ap.parse_args()
    import pandas as pd
    import ray

    from raystudy.results import TRIALS
    from raystudy.runner import run_study
    from raystudy.session import init_ray
    from raystudy.spec.load import load_document
    print(machine())
    t0 = time.perf_counter()
    init_ray(dashboard=False)
    t_init = time.perf_counter() - t0
    cpus = int(ray.cluster_resources().get("CPU", os.cpu_count() or 1))
    print(f"ray.init (local, no dashboard): {t_init:.1f} s; {cpus} CPUs")
    rows = []
    for n in a.ns:
        with tempfile.TemporaryDirectory() as d:
            study = load_document(doc(n))
            t1 = time.perf_counter()
            run_study(study, d, dashboard=False, verbose=False)
            wall = time.perf_counter() - t1
            df = pd.read_parquet(Path(d) / study.name / TRIALS)
        inside = float(df["wall_time_s"].sum())
        ideal = inside / min(cpus, n)
        rows.append({"N": n, "wall_s": f"{wall:.1f}", "sum_in_trial_s": f"{inside:.1f}",
                     "ideal_wall_s": f"{ideal:.1f}", "overhead_s": f"{wall - ideal:.1f}",
                     "overhead_per_trial_s": f"{(wall - ideal) / n:.2f}",
                     "train_s": f"{df['train_time_s'].sum():.1f}", "eval_s": f"{df['eval_time_s'].sum():.1f}"})
    print(table(rows, list(rows[0])))
    print("wall_s: run_study from the loaded study to the last table write (Ray already started);\n"
          "sum_in_trial_s: data-to-device + model build + training + evaluation inside the trials;\n"
          "overhead: wall - sum_in_trial / concurrency (trial actor start, result transport, tables).")


if __name__ == "__main__":
    main()
