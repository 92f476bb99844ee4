"""Group-equivariant CNNs (escnn) that pair with the StdCNNs: gcnn_mnist, gcnn_vgg16,
gcnn_resnet18.

Following Kamath et al. (spatial vs adversarial robustness, Sec. 4, after Cohen &
Welling 2016), each GCNN is its StdCNN twin with every layer replaced by its
group-equivariant counterpart: convolutions become G-steerable convolutions between
regular fields (escnn's R2Conv basis), batch norm is shared per field, and the
classifier sees only group-pooled (invariant) features. Groups: `c4`, `c8` (rotations
by 90° / 45°) and `d4` (rotations by 90° and reflections). The layers and the
parameter-matching rule (each G-layer keeps its twin's parameter count) are in
gcnn_layers.py. In gcnn_mnist the first fully-connected layer (c * h * w -> hidden)
becomes a G-conv whose kernel covers the whole h×w map; its output field count is
set so that this layer alone matches the FC layer's parameter count.

Exact invariance. The study's rotations (raystudy.augment) turn an image about its
centre, (H-1)/2, which for a 28×28 digit lies between pixels; a 90° turn is then
exactly torch.rot90. The GCNNs keep that centre: every map stays even-sized (3×3
convs with padding 1, 2×2 max pools on even maps, whose windows tile symmetrically),
and gcnn_resnet18 downsamples with a stride-1 conv followed by a 2×2 average pool
instead of a stride-2 conv (a stride-2 grid on an even map is not symmetric). Logits
are then invariant to multiples of 90° up to float rounding, with or without the
input mask. Padding MNIST to 29×29 (the usual advice, to make the centre a pixel)
would move the centre half a pixel away from the one the study rotates about and
break that exactness, so it is not done.

Input mask (option `mask`, off by default, the same option and default on the StdCNN
twins: models.base.DiskMask). Exact invariance at multiples of 90° does not need it.
Other angles need interpolation, and the square frame does not turn with the image, so
C8 features follow 45° turns only approximately; the mask hides the corners that leave
the frame under such turns, which matters for images with content there (CIFAR). On
MNIST digits, whose corners are black, it barely changes the 45° behaviour (an
untrained C8 model's relative logit change: 0.388 without, 0.387 with;
tests/test_gcnn.py). The mask also takes those pixels away from attacks, so a study
comparing twins sets it on both or on neither.
"""

from __future__ import annotations

import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn

from ..registry import MODELS
from .base import InputMask, ModelOptions, Normalize, input_mask, resolve_stats
from .gcnn_layers import (GROUP_ORDER, EqConv2d, FieldBatchNorm, Group, GroupPool, basis_dim,
                          check_square_input, matched_fields)


class GCNNOptions(ModelOptions):
    group: Group = "c4"
    # The StdCNN twin's widths; the matching rule turns them into field counts.
    channels: list[int] = Field(default_factory=lambda: [32, 32, 64, 64], min_length=4, max_length=4)
    hidden: int = Field(256, ge=1)
    kernel: int = Field(3, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    batchnorm: bool = False
    mask: InputMask = False
    mean: list[float] | None = None
    std: list[float] | None = None

    @field_validator("kernel")
    @classmethod
    def _odd(cls, v):
        if v % 2 == 0:
            raise ValueError("kernel must be odd (the filter is centred on a pixel)")
        return v

    @field_validator("channels")
    @classmethod
    def _positive(cls, v):
        if any(c < 1 for c in v):
            raise ValueError("channels must be positive")
        return v


class GCNNMnist(nn.Module):
    """G-Conv-G-Conv-Pool-G-Conv-G-Conv-Pool-G-FC-GroupPool-FC: the twin of StdCNN."""

    def __init__(self, opts: GCNNOptions, info):
        super().__init__()
        check_square_input("gcnn_mnist", info, 4)
        g, k = opts.group, opts.kernel
        self.group, self.order = g, GROUP_ORDER[g]
        f = [matched_fields(c, g, k) for c in opts.channels]
        self.fields = f

        def block(fin, fout, first=False):
            conv = (EqConv2d(g, 0, fout, k, trivial_in=True, in_channels=info.channels) if first
                    else EqConv2d(g, fin, fout, k))
            layers = [conv]
            if opts.batchnorm:
                layers.append(FieldBatchNorm(fout, self.order))
            layers.append(nn.ReLU(inplace=True))
            return layers

        self.normalize = Normalize(*resolve_stats(opts, info))
        self.mask = input_mask(opts, info)
        self.trunk = nn.Sequential(
            nn.Sequential(*block(0, f[0], first=True), *block(f[0], f[1])), nn.MaxPool2d(2),
            nn.Sequential(*block(f[1], f[2]), *block(f[2], f[3])), nn.MaxPool2d(2),
        )
        side = info.height // 4
        # The FC layer over the c4 x side x side map becomes a G-conv covering the map;
        # its field count matches that layer's parameter count (module docstring).
        hidden = max(1, round(opts.channels[3] * side * side * opts.hidden
                              / (f[3] * basis_dim(g, side))))
        self.hidden_fields = hidden
        self.head = nn.Sequential(
            EqConv2d(g, f[3], hidden, side, padding=0), nn.ReLU(inplace=True),
            GroupPool(self.order), nn.Flatten(), nn.Dropout(opts.dropout),
            nn.Linear(hidden, info.num_classes),
        )

    def features(self, x):
        """Regular-field feature maps (B, fields * |G|, H/4, W/4) before the head."""
        return self.trunk(self.mask(self.normalize(x)))

    def forward(self, x):
        return self.head(self.features(x))


@MODELS.register("gcnn_mnist", GCNNOptions)
def gcnn_mnist(opts: GCNNOptions, info) -> nn.Module:
    """GCNN twin of stdcnn_mnist (Kamath et al., supp. Table 2; layers as in Cohen & Welling 2016)."""
    return GCNNMnist(opts, info)


# ------------------------------------------------------------------ CIFAR GCNNs

class GCIFAROptions(ModelOptions):
    group: Group = "c4"
    # Multiplies the StdCNN twin's widths (use the same value on both twins).
    width: float = Field(1.0, gt=0)
    batchnorm: bool = True
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    mask: InputMask = False
    mean: list[float] | None = None
    std: list[float] | None = None


class GVGG16(nn.Module):
    def __init__(self, opts: GCIFAROptions, info):
        super().__init__()
        from .cifar_nets import VGG16_CFG, scaled
        check_square_input("gcnn_vgg16", info, 32)
        g = opts.group
        self.group, self.order = g, GROUP_ORDER[g]
        self.normalize = Normalize(*resolve_stats(opts, info))
        self.mask = input_mask(opts, info)
        layers: list[nn.Module] = []
        fin, first = None, True
        for v in VGG16_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            fout = matched_fields(scaled(v, opts.width), g, 3)
            layers.append(EqConv2d(g, 0, fout, 3, trivial_in=True, in_channels=info.channels)
                          if first else EqConv2d(g, fin, fout, 3))
            if opts.batchnorm:
                layers.append(FieldBatchNorm(fout, self.order))
            layers.append(nn.ReLU(inplace=True))
            fin, first = fout, False
        self.trunk = nn.Sequential(*layers)
        self.head = nn.Sequential(GroupPool(self.order), nn.AdaptiveMaxPool2d(1), nn.Flatten(),
                                  nn.Dropout(opts.dropout), nn.Linear(fin, info.num_classes))

    def features(self, x):
        return self.trunk(self.mask(self.normalize(x)))

    def forward(self, x):
        return self.head(self.features(x))


class GBasicBlock(nn.Module):
    """ResNet basic block between regular fields; a 2x2 average pool after the first
    conv (and on the shortcut) replaces stride 2, keeping even maps rotation-exact."""

    def __init__(self, g: str, fin: int, fout: int, downsample: bool, batchnorm: bool):
        super().__init__()
        order = GROUP_ORDER[g]

        def bn(f):
            return FieldBatchNorm(f, order) if batchnorm else nn.Identity()

        self.conv1 = EqConv2d(g, fin, fout, 3, bias=not batchnorm)
        self.pool = nn.AvgPool2d(2) if downsample else nn.Identity()
        self.bn1, self.conv2, self.bn2 = bn(fout), EqConv2d(g, fout, fout, 3, bias=not batchnorm), bn(fout)
        self.shortcut = nn.Identity()
        if downsample or fin != fout:
            self.shortcut = nn.Sequential(nn.AvgPool2d(2) if downsample else nn.Identity(),
                                          EqConv2d(g, fin, fout, 1, bias=not batchnorm), bn(fout))

    def forward(self, x):
        out = F.relu(self.bn1(self.pool(self.conv1(x))))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class GResNet18(nn.Module):
    def __init__(self, opts: GCIFAROptions, info):
        super().__init__()
        from .cifar_nets import scaled
        check_square_input("gcnn_resnet18", info, 8)
        g = opts.group
        self.group, self.order = g, GROUP_ORDER[g]
        self.normalize = Normalize(*resolve_stats(opts, info))
        self.mask = input_mask(opts, info)
        widths = [matched_fields(scaled(c, opts.width), g, 3) for c in (64, 128, 256, 512)]
        bn = opts.batchnorm
        stem = [EqConv2d(g, 0, widths[0], 3, trivial_in=True, in_channels=info.channels, bias=not bn)]
        if bn:
            stem.append(FieldBatchNorm(widths[0], self.order))
        stem.append(nn.ReLU(inplace=True))
        blocks, fin = [], widths[0]
        for i, fout in enumerate(widths):
            blocks += [GBasicBlock(g, fin, fout, i > 0, bn), GBasicBlock(g, fout, fout, False, bn)]
            fin = fout
        self.trunk = nn.Sequential(*stem, *blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), GroupPool(self.order), nn.Flatten(),
                                  nn.Dropout(opts.dropout), nn.Linear(fin, info.num_classes))

    def features(self, x):
        return self.trunk(self.mask(self.normalize(x)))

    def forward(self, x):
        return self.head(self.features(x))


@MODELS.register("gcnn_vgg16", GCIFAROptions)
def gcnn_vgg16(opts: GCIFAROptions, info) -> nn.Module:
    """GCNN twin of vgg16 (Kamath et al., CIFAR experiments): G-convs, per-field BN, group pooling."""
    return GVGG16(opts, info)


@MODELS.register("gcnn_resnet18", GCIFAROptions)
def gcnn_resnet18(opts: GCIFAROptions, info) -> nn.Module:
    """GCNN twin of resnet18 (Kamath et al., CIFAR experiments): G-convs, per-field BN, group pooling."""
    return GResNet18(opts, info)
