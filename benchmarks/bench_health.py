"""Cost of the health checks per trial: a StdCNN MNIST trial's PGD profile with the checks
off, on (defaults), and with one check at a time, plus the training checks.

A StdCNN is trained for one epoch on `--train` embedded MNIST digits (Adam 1e-3), then the
robustness metric runs the default PGD profile (ε 0, 2, 4, 8, 16 /255, 10 steps) on `--n`
test digits; each configuration is the median of `--repeats` runs. The checks' extra runs
use the first `health.n` (default 100) of those digits.

Run: .venv/bin/python benchmarks/bench_health.py [--n 1000] [--train 1000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))
from _common import machine, table  # noqa: E402

from raystudy.data import load  # noqa: E402
from raystudy.health import CHECKS, HealthOptions  # noqa: E402
from raystudy.metrics import EvalContext  # noqa: E402
from raystudy.registry import METRICS  # noqa: E402
from raystudy.spec.schema import DataSpec  # noqa: E402
from raystudy.training_health import training_checks  # noqa: E402
from tests.helpers import train_stdcnn  # noqa: E402

PROFILE_CHECKS = [c.name for c in CHECKS if c.scope == "robustness profile"]


def _only(name: str | None) -> HealthOptions:
    """Health options with every robustness check off but `name` (None: all off)."""
    return HealthOptions.model_validate({"checks": {c: {"enabled": c == name} for c in PROFILE_CHECKS}})


def _seconds(model, data, n: int, health: HealthOptions | None, repeats: int) -> float:
    entry = METRICS.get("robustness")
    opts = entry.schema.model_validate({"attack": "pgd", "n": n})
    times = []
    for _ in range(repeats):
        ctx = EvalContext(model, data, torch.device("cpu"), extra={} if health is None else {"health": health})
        t0 = time.perf_counter()
        entry.obj(ctx, opts)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--train", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    data = load(DataSpec(dataset="mnist", train_size=a.train, test_size=a.n)).to("cpu")
    model = train_stdcnn(data)
    base = _seconds(model, data, a.n, None, a.repeats)
    rows = [{"checks": "none (profile only)", "seconds": f"{base:.2f}", "extra": "–"}]
    full = _seconds(model, data, a.n, HealthOptions(), a.repeats)
    rows.append({"checks": "all (defaults)", "seconds": f"{full:.2f}", "extra": f"{full - base:+.2f} s"})
    for name in PROFILE_CHECKS:
        s = _seconds(model, data, a.n, _only(name), a.repeats)
        rows.append({"checks": name, "seconds": f"{s:.2f}", "extra": f"{s - base:+.2f} s"})
    t0 = time.perf_counter()
    training_checks([{"epoch": 1, "loss": 0.3}], model, data, HealthOptions())
    rows.append({"checks": "training (did_not_learn, nonfinite_loss, robust_overfit)",
                 "seconds": f"{time.perf_counter() - t0:.2f}", "extra": "–"})
    print(machine())
    print(f"PGD profile on {a.n} digits, checks on the first {HealthOptions().n}; median of {a.repeats}")
    print(table(rows, ["checks", "seconds", "extra"]))


if __name__ == "__main__":
    main()
