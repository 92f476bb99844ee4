"""Batched DeepFool and the distance-to-boundary metric."""

from __future__ import annotations

import pytest
import torch
import torchattacks
from torch import nn

from raystudy.attacks import deepfool_batched
from raystudy.metrics import EvalContext, predict
from raystudy.registry import METRICS


from helpers import train_stdcnn  # noqa: E402


@pytest.fixture(scope="module")
def trained(mnist_small):
    return train_stdcnn(mnist_small)


@pytest.fixture
def linear():
    """An affine 5-class classifier on 1x8x8 images, in float64, and inputs well inside
    the [0, 1] box so the nearest boundary point is a valid image."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 5)).double().eval()
    with torch.no_grad():
        model[1].weight.mul_(3.0)
    x = (0.4 + 0.2 * torch.rand(40, 1, 8, 8)).double()
    return model, x


def closed_form(model, x, candidates=None):
    """Distance to the nearest decision boundary of an affine classifier:
    min over l != k of |f_k - f_l| / ||w_k - w_l||, k the predicted class."""
    W, b = model[1].weight, model[1].bias
    f = x.flatten(1) @ W.T + b
    k = f.argmax(1)
    diff = (f - f.gather(1, k[:, None])).abs()
    wn = (W[None, :, :] - W[k][:, None, :]).norm(dim=2)
    dist = diff / wn
    dist.scatter_(1, k[:, None], float("inf"))
    if candidates is not None:
        # Only the top `candidates - 1` other classes by logit are considered.
        others = f.scatter(1, k[:, None], float("-inf")).topk(candidates - 1, dim=1).indices
        keep = torch.zeros_like(dist, dtype=torch.bool).scatter(1, others, True)
        dist = dist.masked_fill(~keep, float("inf"))
    d, l = dist.min(1)
    return d, k, l


def test_batched_deepfool_equals_closed_form_on_linear_classifier(linear):
    model, x = linear
    d, k, l = closed_form(model, x)
    for overshoot in (0.02, 0.0):
        res = deepfool_batched(model, x, overshoot=overshoot, candidates=5)
        delta = (res.adv - x).flatten(1).norm(dim=1)
        assert res.adv.min() > 0 and res.adv.max() < 1  # the box never bound: closed form applies
        torch.testing.assert_close(delta, (1 + overshoot) * d, rtol=1e-9, atol=1e-12)
        assert torch.equal(res.labels, k)
        if overshoot > 0:
            # One linearization reaches the boundary of an affine model, and crosses it
            # into the closest class.
            assert res.fooled.all() and (res.steps == 1).all()
            assert torch.equal(model(res.adv).argmax(1), l)


def test_candidate_classes_limit_the_search(linear):
    model, x = linear
    d2, _, _ = closed_form(model, x, candidates=2)
    res = deepfool_batched(model, x, candidates=2, overshoot=0.02)
    delta = (res.adv - x).flatten(1).norm(dim=1)
    torch.testing.assert_close(delta, 1.02 * d2, rtol=1e-9, atol=1e-12)
    assert (d2 >= closed_form(model, x)[0] - 1e-12).all()


def test_matches_torchattacks_deepfool_on_linear_classifier(linear):
    model, x = linear
    x = x[:8]
    ours = deepfool_batched(model, x, candidates=5).adv
    ref = torchattacks.DeepFool(model, steps=50, overshoot=0.02)(x, predict(model, x))
    torch.testing.assert_close(ours, ref, rtol=1e-7, atol=1e-9)


def test_batches_do_not_interact(trained, mnist_small):
    x = mnist_small.x_test[:16]
    a = deepfool_batched(trained, x, batch_size=16)
    b = deepfool_batched(trained, x, batch_size=5)
    assert torch.equal(a.fooled, b.fooled) and torch.equal(a.steps, b.steps)
    torch.testing.assert_close(a.adv, b.adv, rtol=1e-4, atol=1e-5)


def test_boundary_metric_on_trained_model(trained, mnist_small):
    entry = METRICS.get("boundary_distance")
    trained.train()
    trained.zero_grad(set_to_none=True)
    try:
        ctx = EvalContext(trained, mnist_small, torch.device("cpu"))
        res = entry.obj(ctx, entry.schema(n=60)).scalars
        assert trained.training and all(p.grad is None for p in trained.parameters())
    finally:
        trained.eval()
    x, y = ctx.subset("test", 60, 0)
    df = deepfool_batched(trained, x, y)
    correct = predict(trained, x) == y
    ok = correct & df.fooled
    # Every fooled input really is misclassified, inside the image box.
    assert (predict(trained, df.adv[ok]) != y[ok]).all()
    assert df.adv.min() >= 0 and df.adv.max() <= 1
    delta = (df.adv - x).flatten(1).norm(dim=1)
    assert res["boundary.success_rate"] == ok.sum().item() / correct.sum().item()
    assert res["boundary.success_rate"] >= 0.95  # box-aware steps do not stall on black pixels
    assert res["boundary.l2"] == pytest.approx(delta[ok].mean().item(), rel=1e-6)
    rel = (delta / x.flatten(1).norm(dim=1))[ok].mean().item()
    assert res["boundary.l2_rel"] == pytest.approx(rel, rel=1e-6)
    assert 0.3 < res["boundary.l2"] < 5.0  # MNIST DeepFool distances are O(1) in L2
    assert res["boundary.n"] == ok.sum().item()
