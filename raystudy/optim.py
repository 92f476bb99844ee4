"""Optimizers and learning-rate schedules (stepped once per epoch)."""

from __future__ import annotations

import torch
from pydantic import Field

from .registry import OPTIMIZERS, SCHEDULES, Options


class SGDOptions(Options):
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    nesterov: bool = False


class AdamOptions(Options):
    lr: float = Field(1e-3, gt=0)
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = Field(0.0, ge=0)


@OPTIMIZERS.register("sgd", SGDOptions)
def sgd(params, o: SGDOptions):
    """SGD with optional momentum / Nesterov and L2 weight decay."""
    return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay,
                           nesterov=o.nesterov and o.momentum > 0)


@OPTIMIZERS.register("adam", AdamOptions)
def adam(params, o: AdamOptions):
    """Adam (L2 weight decay added to the gradient)."""
    return torch.optim.Adam(params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)


class ConstantOptions(Options):
    pass


class MultiStepOptions(Options):
    milestones: list[int] = Field(default_factory=list)
    gamma: float = Field(0.1, gt=0)


class CosineOptions(Options):
    min_lr: float = Field(0.0, ge=0)


@SCHEDULES.register("constant", ConstantOptions)
def constant(opt, o, epochs: int):
    """Keep the learning rate fixed."""
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 1.0)


@SCHEDULES.register("multistep", MultiStepOptions)
def multistep(opt, o: MultiStepOptions, epochs: int):
    """Multiply the learning rate by gamma at each milestone epoch (e.g. 75, 90, 100)."""
    return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(o.milestones), gamma=o.gamma)


@SCHEDULES.register("cosine", CosineOptions)
def cosine(opt, o: CosineOptions, epochs: int):
    """Cosine annealing to min_lr over the stage's epochs."""
    return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs), eta_min=o.min_lr)


def build_optimizer(named, params):
    return named.entry.obj(params, named.options)


def build_schedule(named, optimizer, epochs: int):
    return named.entry.obj(optimizer, named.options, epochs)
