"""Shared fixtures: one local Ray per test session, small data, tmp results."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray shared by every test that needs one (starting one costs ~8 s)."""
    import ray
    if not ray.is_initialized():
        # address="local": always a private instance, never a cluster someone else started
        # on this machine (ray.init() without an address joins the newest one it finds).
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR",
                 configure_logging=True, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def results_dir(tmp_path):
    return tmp_path / "results"


@pytest.fixture(scope="session")
def mnist_small():
    """A small slice of the embedded MNIST on the CPU (DeviceData)."""
    from raystudy.data import load
    from raystudy.spec.schema import DataSpec
    return load(DataSpec(dataset="mnist", train_size=1000, test_size=500)).to("cpu")


def write_study(tmp_path, text: str, name: str = "study.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p
