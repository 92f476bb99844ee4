"""Trial overhead: raystudy's training loop inside a Ray Tune trial vs a bare PyTorch loop.

Same model (stdcnn_mnist), data (embedded MNIST, 3,600 training digits, on the device),
batch size, optimizer and batched rotation augmentation; both use one thread (a trial
with resources.cpu=1 gets one). Images/s are taken from the epochs after the first
(warm-up) in both cases, and only the training part of the epoch is timed, so the
ratio is loop overhead, not evaluation.

Run: .venv/bin/python benchmarks/bench_trial_overhead.py [--epochs 4] [--batch-size 128]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine  # noqa: E402


def bare_loop(epochs: int, bs: int, rotation: float) -> list[float]:
    from raystudy import augment
    from raystudy.data import load
    from raystudy.models.stdcnn import StdCNN, StdCNNOptions
    from raystudy.spec.schema import DataSpec
    torch.manual_seed(0)
    data = load(DataSpec(dataset="mnist")).to("cpu")
    model = StdCNN(StdCNNOptions(), data.info)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    x, y = data.x_train, data.y_train
    rates = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), bs):
            idx = perm[i:i + bs]
            xb = augment.random_transform(x[idx], rotation=rotation, generator=g)
            loss = torch.nn.functional.cross_entropy(model(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        rates.append(len(x) / (time.perf_counter() - t0))
    return rates


def raystudy_trial(epochs: int, bs: int, rotation: float) -> list[float]:
    import pandas as pd

    from raystudy.runner import run_study
    from raystudy.spec.load import load_document
    doc = {
        "name": "bench_overhead",
        "data": {"dataset": "mnist"},
        "model": {"arch": "stdcnn_mnist"},
        "train": {"epochs": epochs, "batch_size": bs, "optimizer": {"name": "adam", "lr": 1e-3},
                  "augment": {"rotation": rotation}, "checkpoint_every": 0},
        "evaluate": [],
        "resources": {"cpu": 1},
    }
    with tempfile.TemporaryDirectory() as d:
        run_study(load_document(doc), d, dashboard=False, verbose=False)
        ep = pd.read_parquet(Path(d) / "bench_overhead" / "epochs.parquet")
    col = "train_images_per_s" if "train_images_per_s" in ep else "images_per_s"
    return ep.sort_values("epoch")[col].tolist()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--rotation", type=float, default=30.0)
    a = ap.parse_args()
    torch.set_num_threads(1)
    print(machine())
    bare = bare_loop(a.epochs, a.batch_size, a.rotation)
    ours = raystudy_trial(a.epochs, a.batch_size, a.rotation)
    b = sum(bare[1:]) / len(bare[1:])
    o = sum(ours[1:]) / len(ours[1:])
    print(f"bare PyTorch loop      : {b:8.1f} images/s (epochs 2..{a.epochs}: {', '.join(f'{v:.0f}' for v in bare[1:])})")
    print(f"raystudy in a Ray trial: {o:8.1f} images/s (epochs 2..{a.epochs}: {', '.join(f'{v:.0f}' for v in ours[1:])})")
    print(f"ratio raystudy / bare  : {o / b:.3f}  (target >= 0.95)")


if __name__ == "__main__":
    main()
