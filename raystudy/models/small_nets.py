"""sgr_cnn (the CNN of the structured-gradient-regularization paper) and an mlp baseline.

Roth et al. (SGR, appendix 7.4) use four 3x3 convs (params[0..3] feature maps,
stride 1, ReLU, a 2x2 max-pool after every second conv) and three dense layers
(params[4], params[5], then the classes), "identical to those used in" Carlini &
Wagner (2017) and Papernot et al. (2016). The parameter lists, which our copy of the
paper lost, are those papers' ones: MNIST [32, 32, 64, 64, 200, 200], CIFAR-10
[64, 64, 128, 128, 256, 256]; convs are unpadded ('valid', as in their Keras code).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import nn

from ..errors import StudyError
from ..registry import MODELS
from .base import ModelOptions, Normalize, resolve_stats

SGR_PARAMS = {"mnist": [32, 32, 64, 64, 200, 200], "cifar": [64, 64, 128, 128, 256, 256]}


class SGRCNNOptions(ModelOptions):
    # 'auto': the MNIST list for 1-channel data, the CIFAR list otherwise.
    variant: Literal["auto", "mnist", "cifar"] = "auto"
    # Explicit [conv1, conv2, conv3, conv4, dense1, dense2]; overrides `variant`.
    params: list[int] | None = Field(None, min_length=6, max_length=6)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    mean: list[float] | None = None
    std: list[float] | None = None


class SGRCNN(nn.Module):
    def __init__(self, opts: SGRCNNOptions, info):
        super().__init__()
        variant = opts.variant if opts.variant != "auto" else ("mnist" if info.channels == 1 else "cifar")
        p = opts.params or SGR_PARAMS[variant]
        side_h, side_w = info.height, info.width
        for _ in range(2):  # two (conv, conv, pool) stages of valid 3x3 convs
            side_h, side_w = (side_h - 4) // 2, (side_w - 4) // 2
        if side_h < 1 or side_w < 1:
            raise StudyError(f"sgr_cnn's unpadded convs and pools leave no pixels of a "
                             f"{info.height}x{info.width} input", path="model.arch",
                             expected="inputs of at least 12x12 pixels")
        self.normalize = Normalize(*resolve_stats(opts, info))
        relu = nn.ReLU
        self.features = nn.Sequential(
            nn.Conv2d(info.channels, p[0], 3), relu(inplace=True), nn.Conv2d(p[0], p[1], 3), relu(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(p[1], p[2], 3), relu(inplace=True), nn.Conv2d(p[2], p[3], 3), relu(inplace=True),
            nn.MaxPool2d(2))
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(p[3] * side_h * side_w, p[4]), relu(inplace=True), nn.Dropout(opts.dropout),
            nn.Linear(p[4], p[5]), relu(inplace=True), nn.Dropout(opts.dropout),
            nn.Linear(p[5], info.num_classes))

    def forward(self, x):
        return self.classifier(self.features(self.normalize(x)))


@MODELS.register("sgr_cnn", SGRCNNOptions)
def sgr_cnn(opts: SGRCNNOptions, info) -> nn.Module:
    """The CNN of Roth et al. (structured gradient regularization, appendix 7.4):
    four conv + three dense layers, their MNIST and CIFAR-10 parameter lists."""
    return SGRCNN(opts, info)


class MLPOptions(ModelOptions):
    hidden: list[int] = Field(default_factory=lambda: [512, 512])
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    mean: list[float] | None = None
    std: list[float] | None = None


class MLP(nn.Module):
    def __init__(self, opts: MLPOptions, info):
        super().__init__()
        if any(h < 1 for h in opts.hidden):
            raise StudyError("mlp hidden sizes must be positive", path="model.hidden")
        self.normalize = Normalize(*resolve_stats(opts, info))
        layers: list[nn.Module] = [nn.Flatten()]
        d = info.channels * info.height * info.width
        for h in opts.hidden:
            layers += [nn.Linear(d, h), nn.ReLU(inplace=True), nn.Dropout(opts.dropout)]
            d = h
        layers.append(nn.Linear(d, info.num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(self.normalize(x))


@MODELS.register("mlp", MLPOptions)
def mlp(opts: MLPOptions, info) -> nn.Module:
    """A fully-connected ReLU baseline (the MLP of Kamath et al., supp. Table 8, on CIFAR-10)."""
    return MLP(opts, info)
