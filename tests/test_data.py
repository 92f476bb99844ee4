"""Datasets: embedded MNIST, torchvision MNIST/CIFAR files written by the test, splits."""

import pickle
import struct

import numpy as np
import pytest
import torch

from raystudy.data import MNIST_FILES, load, load_cifar10, load_mnist
from raystudy.errors import StudyError
from raystudy.spec.schema import DataSpec


def write_idx(path, arr: np.ndarray):
    arr = np.asarray(arr, dtype=np.uint8)
    magic = 0x0800 | arr.ndim  # unsigned byte, ndim
    with open(path, "wb") as f:
        f.write(struct.pack(">I", magic))
        for d in arr.shape:
            f.write(struct.pack(">I", d))
        f.write(arr.tobytes())


def test_embedded_mnist_is_real_digits_with_fixed_splits():
    a = load_mnist(DataSpec(source="embedded", val_fraction=0.1))
    b = load_mnist(DataSpec(source="embedded", val_fraction=0.1))
    assert a.source.startswith("embedded")
    assert a.x_train.shape == (3600, 1, 28, 28) and a.x_test.shape == (1000, 1, 28, 28)
    assert a.x_val.shape[0] == 400 and a.x_train.dtype == torch.uint8
    assert torch.equal(a.y_test, b.y_test) and torch.equal(a.x_train, b.x_train)
    assert set(a.y_train.unique().tolist()) == set(range(10))
    # Real digits: mostly black background, bright strokes.
    assert 0.1 < (a.x_train > 128).float().mean() < 0.3


def test_torchvision_mnist_files_are_used_when_present(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    xtr = rng.integers(0, 256, (50, 28, 28))
    ytr = rng.integers(0, 10, 50)
    write_idx(raw / "train-images-idx3-ubyte", xtr)
    write_idx(raw / "train-labels-idx1-ubyte", ytr)
    write_idx(raw / "t10k-images-idx3-ubyte", xtr[:20])
    write_idx(raw / "t10k-labels-idx1-ubyte", ytr[:20])
    b = load_mnist(DataSpec(root=str(tmp_path), val_fraction=0.2))
    assert b.source.startswith("torchvision")
    assert len(b.x_train) == 40 and len(b.x_val) == 10 and len(b.x_test) == 20
    # Every training image is one of the written ones, pixel for pixel.
    written = {tuple(x.flatten().tolist()) for x in xtr}
    assert all(tuple(x.flatten().tolist()) in written for x in b.x_train.numpy())


def test_torchvision_source_without_files_is_a_clear_error(tmp_path):
    with pytest.raises(StudyError) as ei:
        load_mnist(DataSpec(root=str(tmp_path), source="torchvision"))
    assert "data.root" in str(ei.value) and "MNIST" in str(ei.value)


def test_a_named_root_without_mnist_is_an_error_and_the_default_root_falls_back(tmp_path, monkeypatch):
    """Issue 19: a `data.root` the study names must hold the files; only the default root
    (./data or $RAYSTUDY_DATA) falls back to the embedded digits."""
    partial = tmp_path / "partial"
    raw = partial / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in MNIST_FILES[:3]:
        write_idx(raw / name, np.zeros((2, 28, 28) if "images" in name else 2))
    with pytest.raises(StudyError) as ei:
        load_mnist(DataSpec(root=str(partial)))
    e = ei.value
    assert e.path == "data.root" and str(raw.resolve()) in e.raw and MNIST_FILES[3] in e.raw
    assert MNIST_FILES[0] not in e.raw                      # names only what is missing
    assert all(f in e.expected for f in MNIST_FILES) and "remove data.root" in e.hint
    with pytest.raises(StudyError) as ei:
        load_mnist(DataSpec(root=str(tmp_path / "nope")))
    assert "has no MNIST files" in ei.value.raw and "download" in ei.value.hint
    # Asking for the embedded digits by name still ignores the root.
    assert load_mnist(DataSpec(root=str(tmp_path / "nope"), source="embedded")).source.startswith("embedded")
    # No root named: the default one has no files, so the embedded digits are used.
    monkeypatch.setenv("RAYSTUDY_DATA", str(tmp_path / "nope"))
    assert load_mnist(DataSpec()).source.startswith("embedded")


def test_cifar10_from_pickle_files(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)

    def batch(n):
        return {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": [int(v) for v in rng.integers(0, 10, n)]}

    for i in range(1, 6):
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump(batch(4), f)
    first = batch(6)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(first, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": ["c%d" % i for i in range(10)]}, f)
    b = load_cifar10(DataSpec(dataset="cifar10", root=str(tmp_path), val_fraction=0.0))
    assert b.x_train.shape == (20, 3, 32, 32) and b.x_test.shape == (6, 3, 32, 32)
    # CHW layout: channel 0 of image 0 is the first 1024 bytes of its row.
    assert torch.equal(b.x_test[0, 0].flatten(), torch.from_numpy(first["data"][0, :1024]))
    assert b.info.num_classes == 10


def test_missing_cifar_names_root_and_how_to_fix(tmp_path):
    with pytest.raises(StudyError) as ei:
        load(DataSpec(dataset="cifar10", root=str(tmp_path)))
    msg = str(ei.value)
    assert "data.root" in msg and "CIFAR-10" in msg and "download" in msg


def test_subsampling_and_device_floats():
    b = load(DataSpec(dataset="mnist", train_size=100, test_size=50))
    d = b.to("cpu")
    assert d.x_train.shape[0] == 100 and d.x_test.shape[0] == 50
    assert d.x_train.dtype == torch.float32 and 0 <= d.x_train.min() and d.x_train.max() <= 1
