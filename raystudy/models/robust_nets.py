"""The adversarial-training architectures the papers take from Madry et al. (2018)
and Zhang et al. (TRADES, 2019): lenet_madry, resnet_madry, wrn34_10.

Madry et al.'s models read raw [0, 1] pixels (MNIST) or standardize each image by
its own mean and deviation (CIFAR-10, TensorFlow's per_image_standardization).
Here lenet_madry normalizes with the dataset statistics like every raystudy model
(`mean: [0], std: [1]` gives Madry's raw input; an affine input map is absorbed by
the first layer, so the function class is the same); resnet_madry keeps the
per-image standardization by default (`per_image: false` switches to dataset stats).
"""

from __future__ import annotations

import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn

from ..errors import StudyError
from ..registry import MODELS
from .base import ModelOptions, Normalize, resolve_stats


class LeNetMadryOptions(ModelOptions):
    channels: list[int] = Field(default_factory=lambda: [32, 64], min_length=2, max_length=2)
    hidden: int = Field(1024, ge=1)
    mean: list[float] | None = None
    std: list[float] | None = None


class LeNetMadry(nn.Module):
    """conv5x5(32)-pool-conv5x5(64)-pool-FC(1024)-FC, 'SAME' padding, ReLU."""

    def __init__(self, opts: LeNetMadryOptions, info):
        super().__init__()
        c1, c2 = opts.channels
        self.normalize = Normalize(*resolve_stats(opts, info))
        self.features = nn.Sequential(
            nn.Conv2d(info.channels, c1, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2))
        h, w = info.height // 4, info.width // 4
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(c2 * h * w, opts.hidden), nn.ReLU(inplace=True),
                                        nn.Linear(opts.hidden, info.num_classes))

    def forward(self, x):
        return self.classifier(self.features(self.normalize(x)))


@MODELS.register("lenet_madry", LeNetMadryOptions)
def lenet_madry(opts: LeNetMadryOptions, info) -> nn.Module:
    """The MNIST model of Madry et al. (2018), used for PGD-AT by Kamath et al."""
    return LeNetMadry(opts, info)


# ------------------------------------------------------------------ resnet_madry

class PerImageStandardize(nn.Module):
    """(x - mean(x)) / max(std(x), 1/sqrt(n)) per image, as TensorFlow's
    per_image_standardization in Madry et al.'s CIFAR-10 model."""

    def forward(self, x):
        n = x[0].numel()
        flat = x.flatten(1)
        mean = flat.mean(1).view(-1, 1, 1, 1)
        std = flat.std(1, unbiased=False).clamp(min=n ** -0.5).view(-1, 1, 1, 1)
        return (x - mean) / std


class MadryUnit(nn.Module):
    """Pre-activation residual unit of Madry et al.: leaky ReLU (0.1); a wider unit's
    shortcut average-pools and zero-pads channels instead of using a conv."""

    def __init__(self, cin: int, cout: int, stride: int, activate_before_residual: bool):
        super().__init__()
        self.cin, self.cout, self.stride = cin, cout, stride
        self.activate_before_residual = activate_before_residual
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)

    def forward(self, x):
        a = F.leaky_relu(self.bn1(x), 0.1)
        short = a if self.activate_before_residual else x
        out = self.conv2(F.leaky_relu(self.bn2(self.conv1(a)), 0.1))
        if self.cin != self.cout:
            if self.stride > 1:
                short = F.avg_pool2d(short, self.stride, self.stride)
            pad = (self.cout - self.cin) // 2
            short = F.pad(short, (0, 0, 0, 0, pad, self.cout - self.cin - pad))
        return out + short


class ResNetMadryOptions(ModelOptions):
    widen: int = Field(10, ge=1)
    units: int = Field(5, ge=1)
    per_image: bool = True
    mean: list[float] | None = None
    std: list[float] | None = None


class ResNetMadry(nn.Module):
    def __init__(self, opts: ResNetMadryOptions, info):
        super().__init__()
        self.normalize = PerImageStandardize() if opts.per_image else Normalize(*resolve_stats(opts, info))
        filters = [16, 16 * opts.widen, 32 * opts.widen, 64 * opts.widen]
        self.stem = nn.Conv2d(info.channels, filters[0], 3, 1, 1, bias=False)
        units = []
        for stage, stride in enumerate((1, 2, 2)):
            cin, cout = filters[stage], filters[stage + 1]
            units.append(MadryUnit(cin, cout, stride, activate_before_residual=stage == 0))
            units += [MadryUnit(cout, cout, 1, False) for _ in range(opts.units - 1)]
        self.units = nn.Sequential(*units)
        self.bn = nn.BatchNorm2d(filters[-1])
        self.fc = nn.Linear(filters[-1], info.num_classes)

    def forward(self, x):
        out = self.units(self.stem(self.normalize(x)))
        out = F.leaky_relu(self.bn(out), 0.1)
        return self.fc(out.mean((2, 3)))


@MODELS.register("resnet_madry", ResNetMadryOptions)
def resnet_madry(opts: ResNetMadryOptions, info) -> nn.Module:
    """The CIFAR-10 ResNet of Madry et al. (2018): 3 stages of 5 pre-activation units,
    widths 160/320/640 (a WRN-32-10), used for PGD-AT by Kamath et al."""
    return ResNetMadry(opts, info)


# ---------------------------------------------------------------------- wrn34_10

class WideBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.dropout = nn.Dropout(dropout)
        self.shortcut = None if cin == cout and stride == 1 else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x):
        a = F.relu(self.bn1(x))
        out = self.conv2(self.dropout(F.relu(self.bn2(self.conv1(a)))))
        return out + (x if self.shortcut is None else self.shortcut(a))


class WRNOptions(ModelOptions):
    depth: int = Field(34, ge=10)
    widen: int = Field(10, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    mean: list[float] | None = None
    std: list[float] | None = None

    @field_validator("depth")
    @classmethod
    def _depth(cls, v):
        if (v - 4) % 6:
            raise ValueError(f"a WideResNet depth is 6n + 4 (e.g. 16, 28, 34), got {v}")
        return v


class WideResNet(nn.Module):
    def __init__(self, opts: WRNOptions, info):
        super().__init__()
        n = (opts.depth - 4) // 6
        widths = [16, 16 * opts.widen, 32 * opts.widen, 64 * opts.widen]
        self.normalize = Normalize(*resolve_stats(opts, info))
        self.stem = nn.Conv2d(info.channels, widths[0], 3, 1, 1, bias=False)
        blocks = []
        for stage, stride in enumerate((1, 2, 2)):
            cin, cout = widths[stage], widths[stage + 1]
            blocks += [WideBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1, opts.dropout)
                       for i in range(n)]
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(widths[-1])
        self.fc = nn.Linear(widths[-1], info.num_classes)

    def forward(self, x):
        out = F.relu(self.bn(self.blocks(self.stem(self.normalize(x)))))
        return self.fc(out.mean((2, 3)))


@MODELS.register("wrn34_10", WRNOptions)
def wrn34_10(opts: WRNOptions, info) -> nn.Module:
    """WideResNet-34-10 (Zagoruyko & Komodakis 2016) as used by TRADES (Zhang et al. 2019)
    and by Kamath et al. on CIFAR-100; `depth` / `widen` give other WRNs."""
    if info.height < 4 or info.width < 4:
        raise StudyError("wrn34_10 needs inputs of at least 4x4 pixels", path="model.arch")
    return WideResNet(opts, info)
