"""The one training loop. Plain PyTorch: methods supply the loss, this owns the rest.

Stages (`train.stages`) run one after another on the same weights, each with its own
method, augmentation, optimizer and schedule; a study without stages has one stage.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from . import augment as aug
from .methods.base import TrainState
from .optim import build_optimizer, build_schedule
from .registry import METHODS


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or inf: the trial diverged."""


@dataclass
class FitState:
    """Where training is, for checkpoints and resume."""

    stage: int = 0
    stage_epoch: int = 0
    epoch: int = 0
    history: list[dict] = field(default_factory=list)


def _autocast(device: torch.device, enabled: bool):
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def build_method(named, info):
    entry = METHODS.get(named.name, path="train.method.name")
    return entry.obj(named.options, info)


@torch.no_grad()
def quick_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, bs: int = 1000) -> float:
    if len(x) == 0:
        return float("nan")
    was = model.training
    model.eval()
    correct = torch.zeros((), device=x.device)
    for i in range(0, len(x), bs):
        correct += (model(x[i:i + bs]).argmax(1) == y[i:i + bs]).sum()
    model.train(was)
    return (correct / len(x)).item()


@torch.no_grad()
def validation_scores(model: nn.Module, x: torch.Tensor, y: torch.Tensor, bs: int = 1000) -> dict:
    """`val_accuracy` and `val_loss` (mean cross-entropy) on the whole validation split, logged
    after every epoch so `train.select` can pick an epoch without extra metrics."""
    if len(x) == 0:
        return {"val_accuracy": float("nan"), "val_loss": float("nan")}
    was = model.training
    model.eval()
    correct = torch.zeros((), device=x.device)
    loss = torch.zeros((), device=x.device)
    for i in range(0, len(x), bs):
        logits = model(x[i:i + bs]).float()
        correct += (logits.argmax(1) == y[i:i + bs]).sum()
        loss += nn.functional.cross_entropy(logits, y[i:i + bs], reduction="sum")
    model.train(was)
    return {"val_accuracy": (correct / len(x)).item(), "val_loss": (loss / len(x)).item()}


EpochCallback = Callable[[dict, Callable[[], dict]], None]


@dataclass
class _Loop:
    """What stays fixed for a whole fit: the trial, the model, the data and the RNG."""

    cfg: Any                # parsed.cfg.train
    model: nn.Module
    fwd_model: nn.Module    # the compiled model when train.compile, else `model`
    data: Any
    device: torch.device
    gen: torch.Generator
    fs: FitState


@dataclass
class _Stage:
    """One stage's live objects and where it stands (what its checkpoints hold)."""

    index: int
    spec: Any               # the parsed stage: method, optimizer, schedule, augment, epochs
    method: Any
    opt: torch.optim.Optimizer
    sched: Any
    epochs_before: int      # epochs of the earlier stages
    start_epoch: int
    prev_lr: float
    milestones: int


def _setup(parsed, model: nn.Module, data, device: torch.device, resume: dict | None) -> _Loop:
    cfg = parsed.cfg.train
    model.train()
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    fwd_model = torch.compile(model) if cfg.compile else model
    gen = torch.Generator(device=device)
    gen.manual_seed(parsed.cfg.seed)
    fs = FitState()
    if resume is not None:
        fs = FitState(**resume["fit"])
        model.load_state_dict(resume["model"])
        gen.set_state(resume["rng"].cpu())
    return _Loop(cfg, model, fwd_model, data, device, gen, fs)


def _start_stage(loop: _Loop, spec, si: int, epochs_before: int, resume: dict | None) -> _Stage:
    """Fresh method, optimizer and schedule for stage `si`; mid-stage, restored from `resume`."""
    method = build_method(spec.method, loop.data.info)
    opt = build_optimizer(spec.optimizer, loop.model.parameters())
    sched = build_schedule(spec.schedule, opt, spec.epochs)
    lr, start_epoch, milestones = opt.param_groups[0]["lr"], 0, 0
    if resume is not None and resume["fit"]["stage_epoch"] > 0:
        opt.load_state_dict(resume["optimizer"])
        sched.load_state_dict(resume["schedule"])
        method.load_state_dict(resume.get("method", {}))
        start_epoch = resume["fit"]["stage_epoch"]
        # The lr the last epoch ran at, so a milestone that falls right here is still seen.
        lr = resume.get("lr", opt.param_groups[0]["lr"])
        milestones = resume.get("milestone_index", 0)
    return _Stage(si, spec, method, opt, sched, epochs_before, start_epoch, lr, milestones)


def _epoch_state(loop: _Loop, st: _Stage, e: int) -> TrainState:
    lr = st.opt.param_groups[0]["lr"]
    stepped = e > 0 and not math.isclose(lr, st.prev_lr, rel_tol=1e-9)
    st.milestones += int(stepped)
    st.prev_lr = lr
    return TrainState(epoch=st.epochs_before + e, stage_epoch=e, lr=lr, lr_stepped=stepped,
                      milestone_index=st.milestones, augment=st.spec.augment.model_copy(),
                      device=loop.device, generator=loop.gen)


def _train_batches(loop: _Loop, st: _Stage, state: TrainState) -> tuple[torch.Tensor, dict, int]:
    """One pass over the shuffled training set; returns (loss sum, log sums, batches)."""
    cfg, gen, device = loop.cfg, loop.gen, loop.device
    x_train, y_train = loop.data.x_train, loop.data.y_train
    perm = torch.randperm(len(x_train), generator=gen, device=device)
    loss_sum = torch.zeros((), device=device)
    log_sums: dict[str, Any] = {}
    batches = 0
    for i in range(0, len(x_train), cfg.batch_size):
        idx = perm[i:i + cfg.batch_size]
        xb = aug.augment(x_train[idx], state.augment, gen, model=loop.model, y=y_train[idx])
        if cfg.channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with _autocast(device, cfg.amp):
            loss, logs = st.method.loss(loop.fwd_model, xb, y_train[idx], state)
        st.opt.zero_grad(set_to_none=True)
        loss.backward()
        st.opt.step()
        loss_sum += loss.detach().float()
        for k, v in logs.items():
            log_sums[k] = log_sums.get(k, 0.0) + (v.detach().float() if torch.is_tensor(v) else v)
        batches += 1
    return loss_sum, log_sums, batches


def _run_epoch(loop: _Loop, st: _Stage, e: int) -> dict:
    """Train epoch `e` of stage `st` and return its log row (epochs.parquet)."""
    t0 = time.perf_counter()
    state = _epoch_state(loop, st, e)
    st.method.on_epoch_start(loop.model, state)
    loss_sum, log_sums, batches = _train_batches(loop, st, state)
    st.sched.step()
    # One host sync per epoch: the NaN check rides on the epoch's loss sum.
    mean_loss = (loss_sum / max(1, batches)).item()
    # The .item() above waited for the device, so this is the training time alone.
    train_s = time.perf_counter() - t0
    epoch = st.epochs_before + e + 1
    if loop.cfg.fail_on_nonfinite and not math.isfinite(mean_loss):
        raise NonFiniteLoss(f"loss became {mean_loss} in epoch {epoch} "
                            f"(stage {st.index}, lr {state.lr:g}); lower the learning rate")
    n = len(loop.data.x_train)
    metrics = {
        "epoch": epoch,
        "stage": st.index,
        "loss": mean_loss,
        "lr": state.lr,
        # Events a curriculum reacts to, so its steps can be read off the tables.
        "lr_milestone": st.milestones,
        **validation_scores(loop.model, loop.data.x_val, loop.data.y_val),
        "augment.rotation": float(state.augment.rotation),
        "augment.translation": float(state.augment.translation),
        "epoch_time_s": time.perf_counter() - t0,
        "images_per_s": n / max(1e-9, time.perf_counter() - t0),
        "train_images_per_s": n / max(1e-9, train_s),
    }
    for k, v in log_sums.items():
        metrics[k] = (v / max(1, batches)).item() if torch.is_tensor(v) else v / max(1, batches)
    metrics.update(st.method.epoch_log())
    return metrics


def _state_getter(loop: _Loop, st: _Stage, e: int) -> Callable[[], dict]:
    """A checkpoint of the end of epoch `e`, built only when the callback asks for it."""
    lr, milestones = st.prev_lr, st.milestones   # the values epoch `e` ran with

    def get_state() -> dict:
        fs = loop.fs
        done_stage = e + 1 >= st.spec.epochs
        fit_d = {"stage": st.index + 1 if done_stage else st.index,
                 "stage_epoch": 0 if done_stage else e + 1,
                 "epoch": fs.epoch, "history": list(fs.history)}
        return {"model": loop.model.state_dict(), "optimizer": st.opt.state_dict(),
                "schedule": st.sched.state_dict(), "method": st.method.state_dict(),
                "rng": loop.gen.get_state(), "fit": fit_d, "lr": lr, "milestone_index": milestones}

    return get_state


def fit(parsed, model: nn.Module, data, device: torch.device, *,
        on_epoch: EpochCallback | None = None, resume: dict | None = None) -> FitState:
    """Train `model` on `data.x_train` through every stage of `parsed`.

    on_epoch(metrics, get_state) is called after each epoch; get_state() returns a
    checkpointable dict (model, optimizer, schedule, method, rng and FitState). The
    callback is the hook for anything taken between epochs (checkpoints, metrics at
    chosen epochs, best-epoch selection): it may add keys to `metrics`, which is the
    row stored in FitState.history, and must leave the weights and the model's mode
    as it found them.
    """
    loop = _setup(parsed, model, data, device, resume)
    fs = loop.fs
    epochs_before = sum(s.epochs for s in parsed.stages[: fs.stage])
    for si in range(fs.stage, len(parsed.stages)):
        st = _start_stage(loop, parsed.stages[si], si, epochs_before, resume)
        for e in range(st.start_epoch, st.spec.epochs):
            metrics = _run_epoch(loop, st, e)
            fs.stage, fs.stage_epoch, fs.epoch = si, e + 1, epochs_before + e + 1
            fs.history.append(metrics)
            if on_epoch is not None:
                on_epoch(metrics, _state_getter(loop, st, e))
        epochs_before += st.spec.epochs
        resume = None
    return fs
