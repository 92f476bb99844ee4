"""Shared model pieces."""

from __future__ import annotations

import torch
from torch import nn

from ..registry import MODELS


class Normalize(nn.Module):
    """Per-channel standardization inside the model, so inputs stay in [0, 1]."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


def resolve_stats(opts, info):
    """Model options may override the dataset's normalization statistics."""
    mean = tuple(opts.mean) if getattr(opts, "mean", None) is not None else tuple(info.mean)
    std = tuple(opts.std) if getattr(opts, "std", None) is not None else tuple(info.std)
    if len(mean) == 1 and info.channels > 1:
        mean, std = mean * info.channels, std * info.channels
    return mean, std


def build_model(named, info) -> nn.Module:
    """Build the registered model `named.name` with validated options for `info`."""
    entry = MODELS.get(named.name, path="model.arch")
    return entry.obj(named.options, info)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
