"""RobustBench models by name, with weights from a local file:
`{arch: robustbench, name: Standard, dataset: cifar10, threat: Linf, path: weights.pt}`.

The robustbench package (1.1.1) installs here without changing a pinned package, but it
does not import: its data loader imports `pkg_resources`, which setuptools 81+ no longer
ships, and its weights download from Google Drive (no internet here). So the
architectures are built from raystudy's own zoo, and a RobustBench weights file (the
state dict in RobustBench's layout, as its `load_model` saves it under
`models/<dataset>/<threat>/<name>.pt`, optionally under 'state_dict' and with a
'module.' prefix) is mapped onto it.

The names served are RobustBench's CIFAR-10 entries built on its TRADES-style
WideResNet (Zagoruyko & Komodakis 2016; Zhang et al. 2019), which computes the same
function as raystudy's `wrn34_10` (models/robust_nets.py): a pre-activation block whose
1x1 shortcut reads the activated input when the width changes. These models take raw
[0, 1] pixels (no standardization). `sub_block1` (present in the Carmon et al. and
TRADES checkpoints, unused by the forward pass) is dropped. `depth` / `widen` build
another size of the same family (tests use a WRN-10-1).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator
from torch import nn

from ..errors import StudyError, unknown_name_error
from ..registry import MODELS
from .base import ModelOptions
from .external import check_fit, existing_file, read_state, resolve_file
from .robust_nets import WideResNet, WRNOptions

# (dataset, threat, name) -> (depth, widen, has sub_block1), from RobustBench's model zoo.
ZOO = {
    ("cifar10", "Linf", "Standard"): (28, 10, False),
    ("cifar10", "Linf", "Carmon2019Unlabeled"): (28, 10, True),
    ("cifar10", "Linf", "Zhang2019Theoretically"): (34, 10, True),
    ("cifar10", "L2", "Standard"): (28, 10, False),
    ("cifar10", "corruptions", "Standard"): (28, 10, False),
}


class RobustBenchOptions(ModelOptions):
    name: str = Field(description="the RobustBench model name, e.g. Standard")
    dataset: Literal["cifar10"] = "cifar10"
    threat: Literal["Linf", "L2", "corruptions"] = "Linf"
    path: str = Field(description="the weights file (RobustBench's layout)")
    key: str | None = Field(None, description="the checkpoint entry holding the state dict, e.g. state_dict")
    depth: int | None = Field(None, ge=10, description="another depth of the same WideResNet family")
    widen: int | None = Field(None, ge=1, description="another width of the same WideResNet family")

    _exists = field_validator("path")(classmethod(lambda cls, v: existing_file(v)))

    @model_validator(mode="after")
    def _known(self):
        if (self.dataset, self.threat, self.name) not in ZOO:
            names = [n for d, t, n in ZOO if (d, t) == (self.dataset, self.threat)]
            raise unknown_name_error(f"RobustBench {self.dataset}/{self.threat} model", self.name, names,
                                     path="model.name")
        if self.depth is not None and (self.depth - 4) % 6:
            raise StudyError(f"a WideResNet depth is 6n + 4, got {self.depth}", path="model.depth",
                             expected="e.g. 10, 16, 28, 34")
        return self


def from_robustbench(state: dict, n: int) -> dict:
    """RobustBench's WideResNet names -> wrn34_10's (n blocks per stage); other keys as they are."""
    out = {}
    for k, v in state.items():
        m = re.fullmatch(r"block([123])\.layer\.(\d+)\.(.+)", k)
        if m:
            rest = m.group(3).replace("convShortcut.", "shortcut.")
            out[f"blocks.{(int(m.group(1)) - 1) * n + int(m.group(2))}.{rest}"] = v
        elif k.startswith("conv1."):
            out["stem." + k.removeprefix("conv1.")] = v
        elif k.startswith("bn1."):
            out["bn." + k.removeprefix("bn1.")] = v
        else:
            out[k] = v
    return out


@MODELS.register("robustbench", RobustBenchOptions)
def robustbench(opts: RobustBenchOptions, info) -> nn.Module:
    """A RobustBench CIFAR-10 WideResNet (Croce et al. 2021, RobustBench) with local weights."""
    if info.channels != 3 or info.num_classes != 10:
        raise StudyError(f"RobustBench {opts.dataset} models read 3-channel images of 10 classes, this "
                         f"dataset has {info.channels} channels and {info.num_classes} classes",
                         path="model.dataset", hint="use data: {dataset: cifar10}")
    depth, widen, sub_block = ZOO[(opts.dataset, opts.threat, opts.name)]
    depth, widen = opts.depth or depth, opts.widen or widen
    model = WideResNet(WRNOptions(depth=depth, widen=widen, mean=[0.0], std=[1.0]), info)
    path = resolve_file(opts.path)
    state = read_state(path, opts.key)
    if sub_block:
        state = {k: v for k, v in state.items() if not k.startswith("sub_block1.")}
    own = model.state_dict()
    # The input map is the identity: RobustBench's files carry no normalization buffers.
    state = {**{k: v for k, v in own.items() if k.startswith("normalize.")},
             **from_robustbench(state, (depth - 4) // 6)}
    check_fit(own, state, path)
    model.load_state_dict(state)
    return model
