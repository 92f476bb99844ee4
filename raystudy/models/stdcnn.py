"""StdCNN for MNIST: Conv-Conv-Pool-Conv-Conv-Pool-FC-FC.

The spatial-vs-adversarial paper (Kamath et al., supplementary Table 2) uses this
layer pattern for its MNIST StdCNN/GCNN pair; the table's exact widths are not in
the text we have, so the widths follow the common choice for this pattern
(32-32-64-64 filters, 3x3 kernels, a 256-unit hidden layer) and are options.

`mask` (off by default) fades the input outside the inscribed disk exactly as on the
GCNN twin (models.base.DiskMask): set it on both twins of a comparison or on neither,
so attacks and invariance measures see the same pixels.
"""

from __future__ import annotations

from pydantic import Field
from torch import nn

from ..registry import MODELS
from .base import InputMask, ModelOptions, Normalize, input_mask, resolve_stats


class StdCNNOptions(ModelOptions):
    channels: list[int] = Field(default_factory=lambda: [32, 32, 64, 64], min_length=4, max_length=4)
    hidden: int = Field(256, ge=1)
    kernel: int = Field(3, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    batchnorm: bool = False
    mask: InputMask = False
    mean: list[float] | None = None
    std: list[float] | None = None


class StdCNN(nn.Module):
    def __init__(self, opts: StdCNNOptions, info):
        super().__init__()
        c1, c2, c3, c4 = opts.channels
        k = opts.kernel
        pad = k // 2

        def block(cin, cout):
            layers = [nn.Conv2d(cin, cout, k, padding=pad)]
            if opts.batchnorm:
                layers.append(nn.BatchNorm2d(cout))
            layers.append(nn.ReLU(inplace=True))
            return layers

        self.normalize = Normalize(*resolve_stats(opts, info))
        self.mask = input_mask(opts, info)
        self.features = nn.Sequential(
            *block(info.channels, c1), *block(c1, c2), nn.MaxPool2d(2),
            *block(c2, c3), *block(c3, c4), nn.MaxPool2d(2),
        )
        h, w = info.height // 4, info.width // 4
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(c4 * h * w, opts.hidden), nn.ReLU(inplace=True),
            nn.Dropout(opts.dropout), nn.Linear(opts.hidden, info.num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(self.mask(self.normalize(x))))


@MODELS.register("stdcnn_mnist", StdCNNOptions)
def stdcnn_mnist(opts: StdCNNOptions, info) -> nn.Module:
    """StdCNN (Conv-Conv-Pool-Conv-Conv-Pool-FC-FC), the MNIST architecture of Kamath et al."""
    return StdCNN(opts, info)
