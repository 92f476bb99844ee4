"""Space expansion + validation speed: a 100,000-trial grid.

Prints the seconds to expand and to validate every trial (what `raystudy plan`
and `raystudy run` do before Ray starts); the last line is `total_s=<value>`.
Run: .venv/bin/python benchmarks/bench_space.py
"""

import time

from raystudy.spec.load import load_document

DOC = {
    "name": "big",
    "data": {"dataset": "mnist"},
    "model": {"arch": "stdcnn_mnist"},
    "train": {"epochs": 1, "optimizer": {"name": "sgd", "lr": 0.05}},
    "evaluate": ["accuracy"],
    "space": {
        "train.batch_size": {"grid": [16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192]},
        "train.optimizer.momentum": {"grid": [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]},
        "train.augment.rotation": {"grid": [0, 20, 40, 60, 80, 100, 120, 140, 160, 180]},
        "lr_rule": {"grid": ["fixed", "ratio"]},
        "seed": {"grid": list(range(50))},
        "train.optimizer.lr": {"expr": "0.05 if lr_rule == 'fixed' else 0.05 * train.batch_size / 128"},
    },
}


def load_registries() -> float:
    """Import every registry entry (models, methods, metrics: torch comes with them). A fixed
    cost of any command that validates, whatever the study's size: timed apart."""
    from raystudy.registry import METHODS, METRICS, MODELS
    t0 = time.perf_counter()
    for reg in (MODELS, METHODS, METRICS):
        reg.names()
    return time.perf_counter() - t0


def main():
    print(f"registries (imports torch; once per process): {load_registries():.2f} s")
    t0 = time.perf_counter()
    study = load_document(DOC, expand_trials=False)
    from raystudy.spec.space import expand
    trials = expand(study)
    t1 = time.perf_counter()
    # What `raystudy plan`/`run` do: the plan's validation (each distinct section once).
    from raystudy.spec.plan import validate_trials
    validate_trials(trials, study.file)
    t2 = time.perf_counter()
    print(f"trials: {len(trials)}")
    print(f"expand: {t1 - t0:.2f} s ({len(trials) / (t1 - t0):,.0f} trials/s)")
    print(f"validate: {t2 - t1:.2f} s ({len(trials) / (t2 - t1):,.0f} trials/s)")
    print(f"total: {t2 - t0:.2f} s")
    print(f"total_s={t2 - t0:.2f}")


if __name__ == "__main__":
    main()
