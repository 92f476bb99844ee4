"""Shared model pieces."""

from __future__ import annotations

from typing import Annotated, Literal, Union

import torch
from pydantic import Field
from torch import nn

from ..registry import MODELS, Options


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


class Binarize(Options):
    name: Literal["binarize"]
    threshold: float = Field(0.5, gt=0, lt=1)


class Quantize(Options):
    name: Literal["quantize"]
    levels: int = Field(ge=2, description="grey levels per channel, 0 and 1 included")


InputTransformSpec = Annotated[Union[Binarize, Quantize], Field(discriminator="name")]


class ModelOptions(Options):
    """Options every model takes (each model's options class subclasses this)."""

    input_transform: InputTransformSpec | None = Field(None, description=(
        "an input-transformation defence in front of the model: {name: binarize, threshold: 0.5} "
        "or {name: quantize, levels: K}; its input gradient is zero (a positive control for the "
        "gradient-masking checks)"))


class InputTransform(nn.Module):
    """Binarizes or quantizes the input in [0, 1] before the model sees it: the classic
    obfuscated-gradient defence (Athalye et al., ICML 2018, Sec. 4.1: "shattered gradients";
    Xu et al.'s bit-depth reduction is `quantize`). Its gradient w.r.t. the input is exactly
    zero, so gradient attacks find nothing while the model is no more robust than its
    transform's bins make it: what the health checks must flag."""

    def __init__(self, spec: Binarize | Quantize):
        super().__init__()
        self.spec = spec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.spec, Binarize):
            # `+ 0 * x` keeps the output on x's autograd graph, with a gradient of exactly 0:
            # attacks then run (and see nothing) instead of failing on a disconnected graph.
            return (x > self.spec.threshold).to(x.dtype) + 0 * x
        k = self.spec.levels - 1
        return torch.round(x * k) / k   # round's gradient is 0 everywhere

    def extra_repr(self) -> str:
        return repr(self.spec)


def _transform_input(model: nn.Module, args: tuple):
    return (model.input_transform(args[0]),) + tuple(args[1:])


def add_input_transform(model: nn.Module, spec: Binarize | Quantize | None) -> nn.Module:
    """Put the transform in front of `model`, in place. A forward pre-hook (not a wrapper
    module) keeps the state_dict's keys: checkpoints load with or without the transform,
    and the transform holds no tensors."""
    if spec is not None:
        model.input_transform = InputTransform(spec)
        model.register_forward_pre_hook(_transform_input)
    return model


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
    return add_input_transform(entry.obj(named.options, info), getattr(named.options, "input_transform", None))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
