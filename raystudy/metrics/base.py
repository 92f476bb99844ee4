"""The metric interface and shared helpers."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn


@dataclass
class MetricResult:
    """Flat namespaced scalars (-> trials.parquet) and long-format curve rows
    (-> curves.parquet: each row has `metric`, `x` and value columns such as
    `accuracy` and `consistency`)."""

    scalars: dict[str, float] = field(default_factory=dict)
    curves: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class EvalContext:
    model: nn.Module
    data: Any                      # raystudy.data.DeviceData
    device: torch.device
    seed: int = 0
    batch_size: int = 500
    artifacts: Path | None = None  # where a metric may save files (e.g. a universal direction)
    trial: Any = None              # the ParsedTrial, for metrics that need the config
    extra: dict = field(default_factory=dict)

    def generator(self, offset: int = 0) -> torch.Generator:
        """A seeded generator on the device: two models see the same random draws."""
        g = torch.Generator(device=self.device)
        g.manual_seed(self.seed * 1000003 + offset)
        return g

    def subset(self, split: str = "test", n: int | None = None, seed: int = 0):
        """A fixed, seeded subset of a split (the same for every trial of a study)."""
        x, y = self.data.split(split)
        if n is None or n >= len(x):
            return x, y
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(x), generator=g)[:n].to(x.device)
        return x[idx], y[idx]


@contextlib.contextmanager
def evaluation_mode(model: nn.Module):
    """Eval mode for the duration of a metric; the model's mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Predicted labels, batched, on x's device."""
    out = [model(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long, device=x.device)
