"""Cost of the health checks per trial: a StdCNN MNIST trial's PGD profile with the checks
off, on (defaults), and with one check at a time, plus the training checks.

A StdCNN is trained for one epoch on `--train` embedded MNIST digits (Adam 1e-3), then the
robustness metric runs the default PGD profile (ε 0, 2, 4, 8, 16 /255, 10 steps) on `--n`
test digits, without and with the checks; then each check alone. The checks' extra runs use
the first `health.n` (default 100) of those digits, so their cost does not grow with `--n`.

Run: .venv/bin/python benchmarks/bench_health.py [--n 1000] [--train 1000] [--each]
"""

from __future__ import annotations

import argparse
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


def _run(model, data, n: int, health: HealthOptions | None) -> tuple[float, float]:
    """(seconds of the whole metric, seconds of its health checks) of one PGD profile."""
    entry = METRICS.get("robustness")
    opts = entry.schema.model_validate({"attack": "pgd", "n": n})
    ctx = EvalContext(model, data, torch.device("cpu"), extra={} if health is None else {"health": health})
    t0 = time.perf_counter()
    res = entry.obj(ctx, opts)
    return time.perf_counter() - t0, res.scalars.get("time.health.robustness.pgd_s", 0.0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--train", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--each", action="store_true", help="also time each check alone")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(machine(), flush=True)
    data = load(DataSpec(dataset="mnist", train_size=a.train, test_size=a.n)).to("cpu")
    model = train_stdcnn(data)
    base, _ = _run(model, data, a.n, None)
    full, checks = _run(model, data, a.n, HealthOptions())
    print(f"PGD profile on {a.n} digits: {base:.2f} s without the checks, {full:.2f} s with them "
          f"(the checks: {checks:.2f} s, on the first {HealthOptions().n} digits)", flush=True)
    # One check at a time: its own seconds do not depend on the profile's n (it runs on the
    # first health.n digits), so the profile here is only those digits.
    rows = []
    for name in PROFILE_CHECKS if a.each else []:
        _, s = _run(model, data, HealthOptions().n, _only(name))
        rows.append({"check": name, "seconds": f"{s:.2f}"})
        print(rows[-1], flush=True)
    t0 = time.perf_counter()
    training_checks([{"epoch": 1, "loss": 0.3}], model, data, HealthOptions())
    rows.append({"check": "training (did_not_learn, nonfinite_loss, robust_overfit)",
                 "seconds": f"{time.perf_counter() - t0:.2f}"})
    print(table(rows, ["check", "seconds"]))


if __name__ == "__main__":
    main()
