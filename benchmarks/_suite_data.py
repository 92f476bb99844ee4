"""Synthetic MNIST- and CIFAR-shaped data for benchmarks/gpu_suite.py (no download needed).

Each class is a fixed random pattern of bright strokes on black (as MNIST digits are
mostly black), shifted by up to 2 px and noised per image, so a model learns it in a few
steps and attacks behave as on real digits (black pixels at the [0, 1] box edge). Sizes
and shapes are what cost time; the content only has to be learnable.
"""

from __future__ import annotations

import struct
from pathlib import Path

import torch

SHAPES = {"mnist": ((1, 28, 28), 10, 60_000, 10_000), "cifar10": ((3, 32, 32), 10, 50_000, 10_000),
          "cifar100": ((3, 32, 32), 100, 50_000, 10_000)}


def full_train_size(data_cfg: dict) -> int:
    """Training images of a study's data section at full size (the split a trial trains on)."""
    _, _, n_train, _ = SHAPES.get(data_cfg.get("dataset", "mnist"), SHAPES["mnist"])
    n = round(n_train * (1 - data_cfg.get("val_fraction", 0.1)))
    return min(n, data_cfg["train_size"]) if data_cfg.get("train_size") else n


def images(n: int, shape: tuple, classes: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` uint8 images (N, C, H, W) and int64 labels, generated in chunks."""
    g = torch.Generator().manual_seed(seed)
    c, h, w = shape
    coarse = torch.rand(classes, c, h // 4, w // 4, generator=g)
    templates = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    templates = ((templates - 0.6).clamp_min(0) * 4).clamp_max(1)     # strokes on black
    y = torch.randint(0, classes, (n,), generator=g)
    x = torch.empty(n, c, h, w, dtype=torch.uint8)
    for i in range(0, n, 10_000):
        yb = y[i:i + 10_000]
        dx, dy = torch.randint(-2, 3, (2,), generator=g).tolist()
        base = templates[yb].roll((dy, dx), dims=(2, 3))
        noisy = base + 0.1 * torch.rand(base.shape, generator=g) * (base > 0)
        x[i:i + 10_000] = (noisy.clamp(0, 1) * 255).round().to(torch.uint8)
    return x, y


def bundle(dataset: str, n_train: int, n_val: int = 16, n_test: int = 16, seed: int = 0):
    """A raystudy DataBundle of synthetic images shaped like `dataset`."""
    from raystudy.data import CIFAR10_STATS, CIFAR100_STATS, MNIST_STATS, DataBundle, DataInfo
    shape, classes, _, _ = SHAPES[dataset]
    stats = {"mnist": MNIST_STATS, "cifar10": CIFAR10_STATS, "cifar100": CIFAR100_STATS}[dataset]
    x, y = images(n_train + n_val + n_test, shape, classes, seed)
    a, b = n_train, n_train + n_val
    info = DataInfo(shape[0], shape[1], shape[2], classes, *stats)
    return DataBundle(dataset, "synthetic", x[:a], y[:a], x[a:b], y[a:b], x[b:], y[b:], info)


def write_mnist_files(root: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """Synthetic digits in torchvision's MNIST file format under root/MNIST/raw, so a study
    reads them through raystudy's own `mnist` loader (data: {root: ..., source: torchvision})."""
    raw = Path(root) / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    x, y = images(n_train + n_test, (1, 28, 28), 10, seed)
    parts = {"train": (x[:n_train], y[:n_train]), "t10k": (x[n_train:], y[n_train:])}
    for split, (xs, ys) in parts.items():
        with open(raw / f"{split}-images-idx3-ubyte", "wb") as f:
            f.write(struct.pack(">IIII", 2051, len(xs), 28, 28))
            f.write(xs.numpy().tobytes())
        with open(raw / f"{split}-labels-idx1-ubyte", "wb") as f:
            f.write(struct.pack(">II", 2049, len(ys)))
            f.write(ys.to(torch.uint8).numpy().tobytes())
    return Path(root)
