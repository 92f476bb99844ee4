"""CIFAR StdCNNs of Kamath et al. (spatial vs adversarial robustness): VGG16 and
ResNet18 in their usual CIFAR form (3x3 stem, no stem max-pool, batch norm, one
linear classifier). `width` scales every layer; their GCNN twins (gcnn.py) take the
same `width`, so a pair stays parameter-matched at any width, and the same `mask`
option (off by default; models.base.DiskMask), so a pair can see the same input.
"""

from __future__ import annotations

import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..errors import StudyError
from ..registry import MODELS
from .base import InputMask, ModelOptions, Normalize, input_mask, resolve_stats

VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def scaled(c: int, width: float) -> int:
    return max(1, round(c * width))


class CIFAROptions(ModelOptions):
    width: float = Field(1.0, gt=0)
    batchnorm: bool = True
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    mask: InputMask = False
    mean: list[float] | None = None
    std: list[float] | None = None


class VGG16(nn.Module):
    def __init__(self, opts: CIFAROptions, info):
        super().__init__()
        if info.height % 32 or info.width % 32:
            raise StudyError(f"vgg16 needs inputs whose sides are divisible by 32 (got "
                             f"{info.height}x{info.width})", path="model.arch", hint="use CIFAR-sized images")
        self.normalize = Normalize(*resolve_stats(opts, info))
        self.mask = input_mask(opts, info)
        layers: list[nn.Module] = []
        cin = info.channels
        for v in VGG16_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            cout = scaled(v, opts.width)
            layers.append(nn.Conv2d(cin, cout, 3, padding=1, bias=not opts.batchnorm))
            if opts.batchnorm:
                layers.append(nn.BatchNorm2d(cout))
            layers.append(nn.ReLU(inplace=True))
            cin = cout
        self.features = nn.Sequential(*layers)
        spatial = (info.height // 32) * (info.width // 32)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(opts.dropout),
                                        nn.Linear(cin * spatial, info.num_classes))

    def forward(self, x):
        return self.classifier(self.features(self.mask(self.normalize(x))))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, batchnorm: bool):
        super().__init__()

        def bn(c):
            return nn.BatchNorm2d(c) if batchnorm else nn.Identity()

        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=not batchnorm)
        self.bn1 = bn(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=not batchnorm)
        self.bn2 = bn(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=not batchnorm), bn(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    def __init__(self, opts: CIFAROptions, info):
        super().__init__()
        self.normalize = Normalize(*resolve_stats(opts, info))
        self.mask = input_mask(opts, info)
        widths = [scaled(c, opts.width) for c in (64, 128, 256, 512)]
        bn = opts.batchnorm
        stem = [nn.Conv2d(info.channels, widths[0], 3, 1, 1, bias=not bn)]
        if bn:
            stem.append(nn.BatchNorm2d(widths[0]))
        stem.append(nn.ReLU(inplace=True))
        blocks, cin = [], widths[0]
        for i, cout in enumerate(widths):
            blocks += [BasicBlock(cin, cout, 2 if i > 0 else 1, bn), BasicBlock(cout, cout, 1, bn)]
            cin = cout
        self.features = nn.Sequential(*stem, *blocks)
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(opts.dropout),
                                        nn.Linear(cin, info.num_classes))

    def forward(self, x):
        return self.classifier(self.features(self.mask(self.normalize(x))))


@MODELS.register("vgg16", CIFAROptions)
def vgg16(opts: CIFAROptions, info) -> nn.Module:
    """VGG16 with batch norm (Simonyan & Zisserman 2015), the CIFAR StdCNN of Kamath et al."""
    return VGG16(opts, info)


@MODELS.register("resnet18", CIFAROptions)
def resnet18(opts: CIFAROptions, info) -> nn.Module:
    """ResNet18 (He et al. 2016) in its CIFAR form, the CIFAR StdCNN of Kamath et al."""
    return ResNet18(opts, info)
