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


def fit(parsed, model: nn.Module, data, device: torch.device, *,
        on_epoch: Callable[[dict, Callable[[], dict]], None] | None = None,
        resume: dict | None = None) -> FitState:
    """Train `model` on `data.x_train` through every stage of `parsed`.

    on_epoch(metrics, get_state) is called after each epoch; get_state() returns a
    checkpointable dict (model, optimizer, schedule, method, rng and FitState).
    """
    cfg = parsed.cfg.train
    model.train()
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    fwd_model = torch.compile(model) if cfg.compile else model
    x_train, y_train = data.x_train, data.y_train
    n = len(x_train)
    gen = torch.Generator(device=device)
    gen.manual_seed(parsed.cfg.seed)
    fs = FitState()
    if resume is not None:
        fs = FitState(**resume["fit"])
        model.load_state_dict(resume["model"])
        gen.set_state(resume["rng"].cpu())
    total_before = sum(s.epochs for s in parsed.stages[: fs.stage])
    for si in range(fs.stage, len(parsed.stages)):
        stage = parsed.stages[si]
        method = build_method(stage.method, data.info)
        opt = build_optimizer(stage.optimizer, model.parameters())
        sched = build_schedule(stage.schedule, opt, stage.epochs)
        start_epoch = 0
        if resume is not None and si == fs.stage and fs.stage_epoch > 0:
            opt.load_state_dict(resume["optimizer"])
            sched.load_state_dict(resume["schedule"])
            method.load_state_dict(resume.get("method", {}))
            start_epoch = fs.stage_epoch
        prev_lr = opt.param_groups[0]["lr"] if start_epoch == 0 else resume.get("lr", opt.param_groups[0]["lr"])
        milestones = resume.get("milestone_index", 0) if (resume and start_epoch) else 0
        for e in range(start_epoch, stage.epochs):
            t0 = time.perf_counter()
            lr = opt.param_groups[0]["lr"]
            stepped = e > 0 and not math.isclose(lr, prev_lr, rel_tol=1e-9)
            milestones += int(stepped)
            prev_lr = lr
            state = TrainState(epoch=total_before + e, stage_epoch=e, lr=lr, lr_stepped=stepped,
                               milestone_index=milestones, augment=stage.augment.model_copy(),
                               device=device, generator=gen)
            method.on_epoch_start(model, state)
            perm = torch.randperm(n, generator=gen, device=device)
            loss_sum = torch.zeros((), device=device)
            log_sums: dict[str, Any] = {}
            batches = 0
            for i in range(0, n, cfg.batch_size):
                idx = perm[i:i + cfg.batch_size]
                xb, yb = x_train[idx], y_train[idx]
                xb = aug.augment(xb, state.augment, gen)
                if cfg.channels_last:
                    xb = xb.contiguous(memory_format=torch.channels_last)
                with _autocast(device, cfg.amp):
                    loss, logs = method.loss(fwd_model, xb, yb, state)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss_sum += loss.detach().float()
                for k, v in logs.items():
                    log_sums[k] = log_sums.get(k, 0.0) + (v.detach().float() if torch.is_tensor(v) else v)
                batches += 1
            sched.step()
            # One host sync per epoch: the NaN check rides on the epoch's loss sum.
            mean_loss = (loss_sum / max(1, batches)).item()
            # The .item() above waited for the device, so this is the training time alone.
            train_s = time.perf_counter() - t0
            if cfg.fail_on_nonfinite and not math.isfinite(mean_loss):
                raise NonFiniteLoss(f"loss became {mean_loss} in epoch {total_before + e + 1} "
                                    f"(stage {si}, lr {lr:g}); lower the learning rate")
            metrics = {
                "epoch": total_before + e + 1,
                "stage": si,
                "loss": mean_loss,
                "lr": lr,
                # Events a curriculum reacts to, so its steps can be read off the tables.
                "lr_milestone": milestones,
                "val_accuracy": quick_accuracy(model, data.x_val, data.y_val),
                "augment.rotation": float(state.augment.rotation),
                "augment.translation": float(state.augment.translation),
                "epoch_time_s": time.perf_counter() - t0,
                "images_per_s": n / max(1e-9, time.perf_counter() - t0),
                "train_images_per_s": n / max(1e-9, train_s),
            }
            for k, v in log_sums.items():
                metrics[k] = (v / max(1, batches)).item() if torch.is_tensor(v) else v / max(1, batches)
            metrics.update(method.epoch_log())
            fs.stage, fs.stage_epoch, fs.epoch = si, e + 1, total_before + e + 1
            fs.history.append(metrics)

            def get_state(si=si, e=e, opt=opt, sched=sched, method=method, lr=lr, ms=milestones):
                done_stage = e + 1 >= stage.epochs
                fit_d = {"stage": si + 1 if done_stage else si, "stage_epoch": 0 if done_stage else e + 1,
                         "epoch": fs.epoch, "history": list(fs.history)}
                return {"model": model.state_dict(), "optimizer": opt.state_dict(),
                        "schedule": sched.state_dict(), "method": method.state_dict(),
                        "rng": gen.get_state(), "fit": fit_d, "lr": lr, "milestone_index": ms}

            if on_epoch is not None:
                on_epoch(metrics, get_state)
        total_before += stage.epochs
        resume = None
    return fs
