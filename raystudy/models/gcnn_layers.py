"""escnn building blocks of the GCNNs (gcnn.py): the groups, the parameter-matching
rule, and plain-torch layers between regular fields (EqConv2d, FieldBatchNorm,
GroupPool).

Parameter-matching rule (documented, and reported by `raystudy plan --params`):
  A plain k×k conv has k² parameters per (in channel, out channel) pair; a
  regular-to-regular G-conv has d(G, k) parameters per (in field, out field) pair,
  where d is the size of escnn's band-limited steerable basis (C4: 24 at k=3, 72 at
  k=7; C8 and D4: 48 at k=3, 144 at k=7). A StdCNN layer with c channels becomes a
  G-layer with round(c * sqrt(k² / d(G, k))) fields, so every regular-to-regular
  layer keeps its twin's parameter count (f_in * f_out * d = c_in * c_out * k²).
  Each field has |G| channels, so a GCNN is wider in channels (and costs more FLOPs)
  than its twin.

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
from pydantic import BeforeValidator
from torch import nn

from ..errors import StudyError

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


def check_square_input(name: str, info, divisor: int) -> None:
    if info.height != info.width or info.height % divisor:
        raise StudyError(f"{name} needs square inputs whose side is divisible by {divisor} "
                         f"(got {info.height}x{info.width})", path="model.arch",
                         hint="its 2x2 pools must tile the map symmetrically to stay rotation-exact")
