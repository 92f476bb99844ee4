"""Shared model pieces."""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field
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


class DiskMask(nn.Module):
    """Fades the normalized input to zero outside the inscribed disk (Gaussian edge of
    width `margin` pixels beyond radius min(H, W)/2 - 1).

    Applied after Normalize, so a masked pixel reads 0, the dataset mean, the same
    value the first convolution's zero padding has: the model then sees a signal
    supported on the disk inside a zero field, which a rotation by any angle maps onto
    itself. On 28×28 digits it scales 60 corner pixels by less than 0.01 (12 by less
    than 1e-6) and 152 by less than 0.5; input gradients, and so attacks, shrink by the
    same factors there.
    """

    def __init__(self, h: int, w: int, margin: float = 1.0):
        super().__init__()
        ys = torch.arange(h, dtype=torch.float32) - (h - 1) / 2
        xs = torch.arange(w, dtype=torch.float32) - (w - 1) / 2
        r = torch.sqrt(ys[:, None] ** 2 + xs[None, :] ** 2)
        inner = min(h, w) / 2 - 1.0
        mask = torch.exp(-((r - inner).clamp(min=0) / margin) ** 2 / 2)
        # Not persistent: a function of the input size, so state_dicts stay the same
        # with and without the mask.
        self.register_buffer("mask", mask.view(1, 1, h, w), persistent=False)

    def forward(self, x):
        return x * self.mask


# The `mask` option of every StdCNN/GCNN twin: one declaration, one default (off), so a
# pair compared in a study sees the same input unless the study says otherwise.
InputMask = Annotated[bool, Field(description=(
    "Fade the input outside the inscribed disk (models.base.DiskMask) before the first layer; "
    "use the same value on both twins of a comparison"))]


def input_mask(opts, info) -> nn.Module:
    """The model's input mask for option `mask` (identity when off)."""
    return DiskMask(info.height, info.width) if opts.mask else nn.Identity()


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
