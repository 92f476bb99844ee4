"""Models raystudy did not train, evaluated with every metric it has (`train.epochs: 0`):

  checkpoint    a state dict for a registered architecture: `{arch: checkpoint, path: w.pt,
                base: stdcnn_mnist, base_options: {...}}`; a raystudy trial's model.pt, or a
                training checkpoint whose state dict sits under `key` (e.g. `state_dict`)
  torchscript   a TorchScript file (torch.jit.save): `{arch: torchscript, path: m.pt,
                normalize: {mean: [..], std: [..]}}`; the scripted model must take NCHW
                images and return logits; `normalize` is applied to the [0, 1] input first
                when the model expects standardized inputs

Weights are data: state dicts load with weights_only=True. A TorchScript file is code
that TorchScript's interpreter runs (not Python's unpickler); load only files you trust.
A relative `path` is read from the folder raystudy was started in (a Ray Tune trial runs
in its own folder); on a cluster the file must be at that path on every node.
"""

from __future__ import annotations

import copy
import io
import os
from pathlib import Path
from typing import Any

import torch
from pydantic import Field, ValidationError, field_validator, model_validator
from torch import nn

from ..errors import StudyError, pydantic_errors, raise_all
from ..registry import MODELS, Options
from .base import ModelOptions, Normalize

EXTERNAL = ("checkpoint", "torchscript", "robustbench")


def resolve_file(path: str, key: str = "model.path") -> Path:
    """`path` as a file, relative paths from the user's folder; a StudyError naming `key`
    when it is not there."""
    p = Path(path).expanduser()
    if not p.is_absolute():
        p = Path(os.environ.get("TUNE_ORIG_WORKING_DIR") or os.getcwd()) / p
    if not p.is_file():
        raise StudyError(f"no file at '{path}' (looked for {p})", path=key,
                         hint="give the path of the weights file, absolute or relative to the folder "
                              "raystudy runs in")
    return p


def existing_file(path: str) -> str:
    """`path` unchanged when it names a file (the options' `path` validator); else resolve_file's error."""
    resolve_file(path)
    return path


def read_state(path: Path, key: str | None = None, where: str = "model.path") -> dict[str, torch.Tensor]:
    """The state dict in `path` (CPU tensors): `key` picks it out of a training checkpoint;
    a 'module.' prefix on every key (torch.nn.DataParallel) is dropped."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user mistake
        raise StudyError(f"cannot read {path} as a weights file ({type(e).__name__}: {e})", path=where,
                         hint="save it with torch.save(model.state_dict(), path)") from None
    if key is not None:
        if not isinstance(state, dict) or key not in state:
            have = ", ".join(map(str, list(state)[:8])) if isinstance(state, dict) else type(state).__name__
            raise StudyError(f"{path} has no entry '{key}' (it has: {have})", path="model.key",
                             hint="name the entry that holds the state dict, or remove 'key'")
        state = state[key]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise StudyError(f"{path} does not hold a state dict (name -> tensor)", path="model.key" if key else where,
                         hint="set 'key' to the entry of the checkpoint that holds the state dict")
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def check_fit(own: dict, state: dict, path: Path, where: str = "model.path") -> None:
    """Refuse weights whose names or shapes differ from the model's, naming them."""
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    bad = sorted(f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                 for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or extra or bad:
        parts = [f"{name}: {', '.join(ks[:4])}{' ...' if len(ks) > 4 else ''} ({len(ks)})"
                 for name, ks in (("missing", missing), ("unexpected", extra), ("shape differs", bad)) if ks]
        raise StudyError(f"the weights in {path} do not fit the model ({'; '.join(parts)})", path=where,
                         hint="build the architecture and options the weights were saved from")


# -------------------------------------------------------------------- checkpoint

class CheckpointOptions(ModelOptions):
    path: str = Field(description="the state dict file (torch.save(model.state_dict()))")
    base: str = Field(description="the registered architecture the weights belong to")
    base_options: dict[str, Any] = Field(default_factory=dict, description="that architecture's options")
    key: str | None = Field(None, description="the entry of a training checkpoint holding the state dict")

    _exists = field_validator("path")(classmethod(lambda cls, v: existing_file(v)))

    @model_validator(mode="after")
    def _base(self):
        if self.base in EXTERNAL:
            raise StudyError(f"'{self.base}' loads a file itself and cannot be a base", path="model.base",
                             expected="an architecture raystudy builds, e.g. stdcnn_mnist")
        entry = MODELS.get(self.base, path="model.base")
        try:
            entry.schema.model_validate(self.base_options)
        except ValidationError as e:
            raise_all(pydantic_errors(e, entry.schema, file=None, prefix="model.base_options"))
        return self


@MODELS.register("checkpoint", CheckpointOptions)
def checkpoint(opts: CheckpointOptions, info) -> nn.Module:
    """A registered architecture (`base`, with `base_options`) holding the weights of a file;
    names or shapes that do not fit are refused, naming them."""
    entry = MODELS.get(opts.base, path="model.base")
    model = entry.obj(entry.schema.model_validate(opts.base_options), info)
    path = resolve_file(opts.path)
    state = read_state(path, opts.key)
    check_fit(model.state_dict(), state, path)
    model.load_state_dict(state)
    return model


# ------------------------------------------------------------------- torchscript

class NormalizeOptions(Options):
    mean: list[float] = Field(min_length=1)
    std: list[float] = Field(min_length=1)

    @model_validator(mode="after")
    def _same_length(self):
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean has {len(self.mean)} values and std {len(self.std)}")
        if min(self.std) <= 0:
            raise ValueError("std values must be positive")
        return self


class TorchScriptOptions(ModelOptions):
    path: str = Field(description="a file written by torch.jit.save")
    normalize: NormalizeOptions | None = Field(None, description="standardize the [0, 1] input first")

    _exists = field_validator("path")(classmethod(lambda cls, v: existing_file(v)))


class Scripted(nn.Module):
    """A TorchScript model behind an optional input standardization."""

    def __init__(self, net: nn.Module, normalize: nn.Module):
        super().__init__()
        self.normalize = normalize
        self.net = net

    def forward(self, x):
        return self.net(self.normalize(x))

    def __deepcopy__(self, memo):
        # copy.deepcopy of a loaded ScriptModule (torch 2.14) gives parameters that are clones
        # in the autograd graph, not leaves: they never get a .grad and an optimizer cannot
        # train them. A save/load round trip gives a true copy with leaf parameters.
        buf = io.BytesIO()
        torch.jit.save(self.net, buf)
        buf.seek(0)
        new = Scripted(torch.jit.load(buf, map_location="cpu"), copy.deepcopy(self.normalize, memo))
        memo[id(self)] = new
        for mine, theirs in zip(self.parameters(), new.parameters()):
            theirs.requires_grad_(mine.requires_grad)
            if mine.grad is not None:
                theirs.grad = mine.grad.clone()
        new.to(next(self.net.parameters(), torch.empty(0)).device)
        for a, b in zip(self.modules(), new.modules()):
            b.training = a.training
        return new


def _last_line(e: Exception) -> str:
    # TorchScript puts the interpreter's traceback first and the cause last.
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return (lines[-1] if lines else type(e).__name__)[:200]


def _check_logits(model: nn.Module, info, path: Path) -> None:
    """A scripted model must map a batch of the dataset's images to one logit per class."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, info.channels, info.height, info.width))
    except Exception as e:  # noqa: BLE001 - any failure is the file not fitting the data
        raise StudyError(f"the TorchScript model in {path} fails on a {info.channels}x{info.height}x"
                         f"{info.width} batch ({_last_line(e)})",
                         path="model.path", expected="a model taking NCHW images of the study's dataset") from None
    finally:
        model.train(was)
    if not torch.is_tensor(out) or tuple(out.shape) != (2, info.num_classes):
        shape = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
        raise StudyError(f"the TorchScript model in {path} returns {shape} for a batch of 2", path="model.path",
                         expected=f"logits of shape (batch, {info.num_classes})")


@MODELS.register("torchscript", TorchScriptOptions)
def torchscript(opts: TorchScriptOptions, info) -> nn.Module:
    """A model saved with torch.jit.save (script or trace), loaded on the CPU."""
    path = resolve_file(opts.path)
    try:
        net = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:  # noqa: BLE001
        raise StudyError(f"cannot read {path} as TorchScript ({type(e).__name__})", path="model.path",
                         hint="write it with torch.jit.save(torch.jit.script(model), path)") from None
    norm = (Normalize(opts.normalize.mean, opts.normalize.std) if opts.normalize is not None
            else nn.Identity())
    if opts.normalize is not None and len(opts.normalize.mean) not in (1, info.channels):
        raise StudyError(f"{len(opts.normalize.mean)} normalization values for {info.channels} channels",
                         path="model.normalize.mean", expected=f"1 or {info.channels} values")
    model = Scripted(net, norm)
    _check_logits(model, info, path)
    return model
