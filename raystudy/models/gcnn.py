"""Group-equivariant CNNs (escnn) that pair with the StdCNNs: gcnn_mnist, gcnn_vgg16,
gcnn_resnet18.

Following Kamath et al. (spatial vs adversarial robustness, Sec. 4, after Cohen &
Welling 2016), each GCNN is its StdCNN twin with every layer replaced by its
group-equivariant counterpart: convolutions become G-steerable convolutions between
regular fields (escnn's R2Conv basis), batch norm is shared per field, and the
classifier sees only group-pooled (invariant) features. Groups: `c4`, `c8` (rotations
by 90° / 45°) and `d4` (rotations by 90° and reflections).

Parameter-matching rule (documented, and reported by `raystudy plan --params`):
  A plain k×k conv has k² parameters per (in channel, out channel) pair; a
  regular-to-regular G-conv has d(G, k) parameters per (in field, out field) pair,
  where d is the size of escnn's band-limited steerable basis (C4: 24 at k=3, 72 at
  k=7; C8 and D4: 48 at k=3, 144 at k=7). A StdCNN layer with c channels becomes a
  G-layer with round(c * sqrt(k² / d(G, k))) fields, so every regular-to-regular
  layer keeps its twin's parameter count (f_in * f_out * d = c_in * c_out * k²).
  Each field has |G| channels, so a GCNN is wider in channels (and costs more FLOPs)
  than its twin. In gcnn_mnist the first fully-connected layer (c * h * w -> hidden)
  becomes a G-conv whose kernel covers the whole h×w map; its output field count is
  set so that this layer alone matches the FC layer's parameter count.

Exact invariance. The study's rotations (raystudy.augment) turn an image about its
centre, (H-1)/2, which for a 28×28 digit lies between pixels; a 90° turn is then
exactly torch.rot90. The GCNNs keep that centre: every map stays even-sized (3×3
convs with padding 1, 2×2 max pools on even maps, whose windows tile symmetrically),
and gcnn_resnet18 downsamples with a stride-1 conv followed by a 2×2 average pool
instead of a stride-2 conv (a stride-2 grid on an even map is not symmetric). Logits
are then invariant to multiples of 90° up to float rounding. Padding MNIST to 29×29
(the usual advice, to make the centre a pixel) would move the centre half a pixel
away from the one the study rotates about and break that exactness, so it is not
done. Angles that are not multiples of 90° need interpolation: C8 features rotate
with 45° turns only approximately; an optional disk mask (default on for MNIST)
hides the image corners, which leave the frame under such turns.

escnn's eval-mode filter cache. R2Conv builds its filter in `.eval()` and keeps it
with its autograd graph attached: deepcopy of an eval-mode model raises, a second
parameter-gradient backward in eval mode raises, and `.eval()` under no_grad leaves
parameter gradients None. These models never hold an R2Conv: `EqConv2d` takes the
R2Conv's weights, bias and basis expansion (plain torch modules) and expands the
filter on every forward (one small matmul; 0.5 ms for a 16->16-field C8 layer,
against 500 ms for that conv on 128 images), so attacks,
Hessians (double backward), state_dict save/load across modes and deepcopy behave
as for any torch model.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from functools import lru_cache
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import BeforeValidator, Field, field_validator
from torch import nn

from ..errors import StudyError
from ..registry import MODELS, Options
from .base import Normalize, resolve_stats

# ------------------------------------------------------------------------- escnn

GROUP_ORDER = {"c4": 4, "c8": 8, "d4": 8}


def _lower(v):
    return v.strip().lower() if isinstance(v, str) else v


Group = Annotated[Literal["c4", "c8", "d4"], BeforeValidator(_lower)]


def _escnn():
    try:
        with warnings.catch_warnings():
            # escnn warns that py3nj (SO(3) only) is missing; nothing here uses SO(3).
            warnings.simplefilter("ignore")
            from escnn import gspaces
            from escnn import nn as enn
    except ImportError as e:  # pragma: no cover - escnn is a dependency
        raise StudyError(f"GCNN models need escnn ({e})", path="model.arch",
                         hint="pip install escnn --no-deps lie_learn joblib autograd pymanopt") from None
    return gspaces, enn


@lru_cache(maxsize=None)
def gspace(group: str):
    gspaces, _ = _escnn()
    if group in ("c4", "c8"):
        return gspaces.rot2dOnR2(GROUP_ORDER[group])
    if group == "d4":
        return gspaces.flipRot2dOnR2(4)
    raise ValueError(f"unknown group {group!r}")


@contextlib.contextmanager
def _dense_svd_fix(group: str):
    """escnn 1.0.11 builds D4 kernel bases through a numerical Clebsch-Gordan solve
    that passes an `np.matrix` to scikit-learn's randomized_svd, which current
    scikit-learn rejects. Convert it to an array for the duration of the build."""
    if group != "d4":
        yield
        return
    import numpy as np
    import escnn.group._numerical as num
    orig = num.randomized_svd
    if orig is None:
        yield
        return
    num.randomized_svd = lambda A, *a, **k: orig(np.asarray(A), *a, **k)
    try:
        yield
    finally:
        num.randomized_svd = orig


def _r2conv(group: str, in_fields: int, out_fields: int, kernel: int, padding: int,
            trivial_in: bool = False, bias: bool = True):
    _, enn = _escnn()
    gs = gspace(group)
    rin = gs.trivial_repr if trivial_in else gs.regular_repr
    with _dense_svd_fix(group):
        # escnn's own init loops over every weight in Python (minutes for a CIFAR
        # GCNN); the same initialization is drawn below, vectorized.
        conv = enn.R2Conv(enn.FieldType(gs, [rin] * in_fields),
                          enn.FieldType(gs, [gs.regular_repr] * out_fields),
                          kernel, padding=padding, bias=bias, initialize=False)
    with torch.no_grad():
        conv.weights.copy_(he_std(group, kernel, trivial_in, in_fields, out_fields)
                           * torch.randn_like(conv.weights))
    return conv


@lru_cache(maxsize=None)
def _he_std_one(group: str, kernel: int, trivial_in: bool) -> torch.Tensor:
    from escnn.nn.init import _generalized_he_init_variances
    conv = _r2conv_uninit(group, 1, 1, kernel, trivial_in)
    return _generalized_he_init_variances(conv.basisexpansion)


def he_std(group: str, kernel: int, trivial_in: bool, in_fields: int, out_fields: int) -> torch.Tensor:
    """escnn's generalized He init (escnn.nn.init.generalized_he_init) for a layer
    between uniform fields. Every (out field, in field) block has the same basis, so
    the per-weight scale is the one-field layer's divided by sqrt(in_fields), tiled
    over the blocks in escnn's weight order (out field, in field, basis element)."""
    return _he_std_one(group, kernel, trivial_in).repeat(in_fields * out_fields) / math.sqrt(in_fields)


def _r2conv_uninit(group: str, in_fields: int, out_fields: int, kernel: int, trivial_in: bool):
    _, enn = _escnn()
    gs = gspace(group)
    rin = gs.trivial_repr if trivial_in else gs.regular_repr
    with _dense_svd_fix(group):
        return enn.R2Conv(enn.FieldType(gs, [rin] * in_fields), enn.FieldType(gs, [gs.regular_repr] * out_fields),
                          kernel, padding=kernel // 2, bias=False, initialize=False)


@lru_cache(maxsize=None)
def basis_dim(group: str, kernel: int) -> int:
    """d(G, k): free parameters of a k×k regular-to-regular G-conv per field pair."""
    return int(_r2conv_uninit(group, 1, 1, kernel, False).weights.numel())


def matched_fields(channels: int, group: str, kernel: int) -> int:
    """The parameter-matching rule: c channels -> round(c * sqrt(k² / d(G, k))) fields."""
    return max(1, round(channels * math.sqrt(kernel * kernel / basis_dim(group, kernel))))


# ------------------------------------------------------------------------ layers

class EqConv2d(nn.Module):
    """A G-steerable convolution between regular fields, run as a plain conv2d.

    Holds escnn R2Conv's learnable weights and bias, its (plain torch) basis
    expansion and escnn's initialization, but not the R2Conv itself, so escnn's
    eval-mode filter cache never exists (see the module docstring)."""

    def __init__(self, group: str, in_fields: int, out_fields: int, kernel: int,
                 padding: int | None = None, trivial_in: bool = False, in_channels: int | None = None,
                 bias: bool = True):
        super().__init__()
        # A trivial-input layer (images) takes `in_channels` scalar fields.
        n_in = in_channels if trivial_in else in_fields
        padding = kernel // 2 if padding is None else padding
        conv = _r2conv(group, n_in, out_fields, kernel, padding, trivial_in=trivial_in, bias=bias)
        self.group, self.padding = group, padding
        self.shape = (conv.out_type.size, conv.in_type.size, kernel, kernel)
        self.weights = conv.weights
        self.expansion = conv._basisexpansion
        if conv.bias is not None:
            self.bias = conv.bias
            self.register_buffer("bias_expansion", conv.bias_expansion.clone())
        else:
            self.bias = None
            self.bias_expansion = None

    def filter(self) -> torch.Tensor:
        return self.expansion(self.weights).reshape(self.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.bias_expansion @ self.bias if self.bias is not None else None
        return F.conv2d(x, self.filter(), b, padding=self.padding)

    def extra_repr(self) -> str:
        return f"{self.group}, {self.shape[1]}->{self.shape[0]} channels, k={self.shape[2]}"


class FieldBatchNorm(nn.BatchNorm3d):
    """Batch norm with one statistic and one affine pair per regular field, shared by
    the field's |G| channels (escnn's InnerBatchNorm), so it commutes with G."""

    def __init__(self, fields: int, order: int):
        super().__init__(fields)
        self.order = order

    def forward(self, x):
        b, c, h, w = x.shape
        return super().forward(x.reshape(b, c // self.order, self.order, h, w)).reshape(b, c, h, w)


class GroupPool(nn.Module):
    """Max over each regular field's |G| channels: a G-invariant feature per field."""

    def __init__(self, order: int):
        super().__init__()
        self.order = order

    def forward(self, x):
        b, c = x.shape[:2]
        return x.reshape(b, c // self.order, self.order, *x.shape[2:]).amax(2)


class DiskMask(nn.Module):
    """Fades the input to zero outside the inscribed disk (Gaussian edge), so image
    corners, which leave the frame under non-90° rotations, do not reach the model."""

    def __init__(self, h: int, w: int, margin: float = 1.0):
        super().__init__()
        ys = torch.arange(h, dtype=torch.float32) - (h - 1) / 2
        xs = torch.arange(w, dtype=torch.float32) - (w - 1) / 2
        r = torch.sqrt(ys[:, None] ** 2 + xs[None, :] ** 2)
        inner = min(h, w) / 2 - 1.0
        mask = torch.exp(-((r - inner).clamp(min=0) / margin) ** 2 / 2)
        self.register_buffer("mask", mask.view(1, 1, h, w), persistent=False)

    def forward(self, x):
        return x * self.mask


def _check_input(name: str, info, divisor: int) -> None:
    if info.height != info.width or info.height % divisor:
        raise StudyError(f"{name} needs square inputs whose side is divisible by {divisor} "
                         f"(got {info.height}x{info.width})", path="model.arch",
                         hint="its 2x2 pools must tile the map symmetrically to stay rotation-exact")


class GCNNOptions(Options):
    group: Group = "c4"
    # The StdCNN twin's widths; the matching rule turns them into field counts.
    channels: list[int] = Field(default_factory=lambda: [32, 32, 64, 64], min_length=4, max_length=4)
    hidden: int = Field(256, ge=1)
    kernel: int = Field(3, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    batchnorm: bool = False
    mask: bool = True
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
        _check_input("gcnn_mnist", info, 4)
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
        self.mask = DiskMask(info.height, info.width) if opts.mask else nn.Identity()
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

class GCIFAROptions(Options):
    group: Group = "c4"
    # Multiplies the StdCNN twin's widths (use the same value on both twins).
    width: float = Field(1.0, gt=0)
    batchnorm: bool = True
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    mask: bool = False
    mean: list[float] | None = None
    std: list[float] | None = None


class GVGG16(nn.Module):
    def __init__(self, opts: GCIFAROptions, info):
        super().__init__()
        from .cifar_nets import VGG16_CFG, scaled
        _check_input("gcnn_vgg16", info, 32)
        g = opts.group
        self.group, self.order = g, GROUP_ORDER[g]
        self.normalize = Normalize(*resolve_stats(opts, info))
        self.mask = DiskMask(info.height, info.width) if opts.mask else nn.Identity()
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
        _check_input("gcnn_resnet18", info, 8)
        g = opts.group
        self.group, self.order = g, GROUP_ORDER[g]
        self.normalize = Normalize(*resolve_stats(opts, info))
        self.mask = DiskMask(info.height, info.width) if opts.mask else nn.Identity()
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
