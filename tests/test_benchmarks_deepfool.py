"""The two [0, 1]-box rules of the batched DeepFool ("mask" and "clip") against closed forms.

benchmarks/bench_metrics.py compares them with Foolbox's L2DeepFoolAttack (a benchmark-only
dependency); these tests need no Foolbox: affine classifiers have exact answers.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from raystudy.attacks import deepfool_batched

RULES = ["mask", "clip"]


def affine(n_in: int, n_out: int, scale: float = 3.0) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(n_in, n_out)).double().eval()
    with torch.no_grad():
        model[1].weight.mul_(scale)
    return model


def unboxed_distance(model, x):
    """Distance to the nearest decision boundary of an affine classifier, no box:
    min over l != k of |f_k - f_l| / ||w_k - w_l||, k the predicted class."""
    W, b = model[1].weight, model[1].bias
    f = x.flatten(1) @ W.T + b
    k = f.argmax(1)
    dist = (f - f.gather(1, k[:, None])).abs() / (W[None] - W[k][:, None]).norm(dim=2)
    return dist.scatter(1, k[:, None], float("inf")).min(1)


@pytest.mark.parametrize("box", RULES)
@pytest.mark.parametrize("overshoot", [0.02, 0.1])
def test_both_rules_give_the_closed_form_while_the_box_is_inactive(box, overshoot):
    model = affine(64, 5)
    x = (0.4 + 0.2 * torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(1))).double()
    d, l = unboxed_distance(model, x)
    res = deepfool_batched(model, x, box=box, overshoot=overshoot, candidates=5)
    assert res.adv.min() > 0 and res.adv.max() < 1  # the box never bound
    delta = (res.adv - x).flatten(1).norm(dim=1)
    # One linearization reaches an affine boundary exactly; no margin while nothing is clipped.
    torch.testing.assert_close(delta, (1 + overshoot) * d, rtol=1e-9, atol=1e-12)
    assert res.fooled.all() and (res.steps == 1).all()
    assert torch.equal(model(res.adv).argmax(1), l)


def boxed_minimum(w: torch.Tensor, c: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """The nearest point of {x in [0, 1]^D : w·x = c} to x0 (KKT: clip(x0 + λw), λ by bisection,
    as w·clip(x0 + λw) is monotone in λ); returns its distance to x0, one per row."""
    lo = torch.zeros(len(x0), dtype=x0.dtype)
    hi = torch.full_like(lo, 1e3)
    sign = torch.sign(c - x0 @ w)
    for _ in range(200):
        mid = (lo + hi) / 2
        reached = sign * ((x0 + (sign * mid)[:, None] * w).clamp(0, 1) @ w - c) >= 0
        hi = torch.where(reached, mid, hi)
        lo = torch.where(reached, lo, mid)
    return ((x0 + (sign * hi)[:, None] * w).clamp(0, 1) - x0).norm(dim=1)


def test_clip_rule_finds_the_box_constrained_nearest_point_of_a_linear_boundary():
    """Two classes, images mostly black (as MNIST): the unconstrained nearest boundary point
    leaves the box. Every "clip" step points along w, so its iterate is clip(x0 + λw), the
    form of the exact box-constrained minimum; it creeps up to it (Foolbox's 1e-4 margin ends
    the creep). "mask" gets there in a few steps with its overshoot on top."""
    model = affine(36, 2, scale=1.0)
    g = torch.Generator().manual_seed(3)
    x = (torch.rand(30, 1, 6, 6, generator=g) * (torch.rand(30, 1, 6, 6, generator=g) < 0.3)).double()
    W, b = model[1].weight.detach(), model[1].bias.detach()
    w, c = W[1] - W[0], b[0] - b[1]
    exact = boxed_minimum(w, c, x.flatten(1))
    free = ((x.flatten(1) @ w - c).abs() / w.norm())
    assert (exact > free * 1.05).any()  # the box binds for some images
    for box in RULES:
        res = deepfool_batched(model, x, box=box, overshoot=0.02, steps=200)
        assert res.fooled.all() and res.adv.min() >= 0 and res.adv.max() <= 1
        d = (res.adv - x).flatten(1).norm(dim=1)
        assert (d >= exact * (1 - 1e-9)).all()  # nothing in the box is closer
        hi = 1e-3 if box == "clip" else 0.02 + 1e-3
        assert (d <= exact * (1 + hi) + 2e-4).all(), box
    clip = deepfool_batched(model, x, box="clip", overshoot=0.02, steps=200)
    mask = deepfool_batched(model, x, box="mask", overshoot=0.02, steps=200)
    assert (clip.adv - x).flatten(1).norm(dim=1).mean() < (mask.adv - x).flatten(1).norm(dim=1).mean()
    assert mask.steps.float().mean() < clip.steps.float().mean()


def test_unknown_box_rule_is_an_error():
    with pytest.raises(ValueError, match="box"):
        deepfool_batched(affine(4, 2), torch.rand(2, 1, 2, 2).double(), box="project")
