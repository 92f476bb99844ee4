"""`attack: deepfool` is the batched DeepFool (issue 17, item 11), and the boundary distance
has the papers' average over every test point in normalized-input units (item 8)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from raystudy.attacks import attack, deepfool_batched, get_attack
from raystudy.data import DataInfo, DeviceData
from raystudy.metrics import predict

from helpers import run_metric, train_stdcnn


@pytest.fixture(scope="module")
def trained(mnist_small):
    return train_stdcnn(mnist_small)


def test_deepfool_is_the_batched_one_and_fools_every_correct_digit(trained, mnist_small):
    """torchattacks' DeepFool fooled only 57% of the correctly classified digits of a small MNIST
    CNN within 50 steps (the rest then counted as robust at every ε); `deepfool` must fool them
    all."""
    assert get_attack("deepfool").run is not None and get_attack("deepfool_torchattacks").make is not None
    x, y = mnist_small.x_test[:200], mnist_small.y_test[:200]
    adv = attack(trained, "deepfool", x, y, steps=50)
    assert torch.equal(adv, deepfool_batched(trained, x, y, steps=50).adv)
    correct = predict(trained, x) == y
    fooled = predict(trained, adv) != y
    assert correct.sum() > 150
    assert (fooled & correct).sum().item() / correct.sum().item() >= 0.99
    res = run_metric("robustness", trained, mnist_small, attack="deepfool", eps=[0, 1e6], n=200)
    assert {r["x"]: r["accuracy"] for r in res.curves}[1e6] <= 0.01


def affine_data(n: int = 30, std: float = 0.25):
    """An affine 4-class model on 1x6x6 images with a Normalize-like `std` buffer, and inputs
    well inside the box (so DeepFool reaches the exact boundary point); labels that disagree
    with the model on a third of the inputs."""
    class Affine(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.lin = nn.Linear(36, 4).double()
            self.register_buffer("std", torch.full((1, 1, 1, 1), std, dtype=torch.float64))

        def forward(self, x):
            return self.lin((x / self.std).flatten(1))

    model = Affine().eval()
    x = (0.45 + 0.1 * torch.rand(n, 1, 6, 6, generator=torch.Generator().manual_seed(1))).double()
    y = predict(model, x)
    y[::3] = (y[::3] + 1) % 4
    e = torch.empty(0, 1, 6, 6, dtype=torch.float64)
    return model, DeviceData("toy", e, y[:0], e, y[:0], x, y, DataInfo(1, 6, 6, 4, (0.5,), (std,)))


def test_all_points_average_in_normalized_units_against_the_closed_form():
    model, data = affine_data()
    x, y = data.x_test, data.y_test
    # Closed form: distance from each input to the nearest boundary of its predicted class.
    W, b = model.lin.weight.detach() / 0.25, model.lin.bias.detach()
    f = x.flatten(1) @ W.T + b
    k = f.argmax(1)
    d = ((f - f.gather(1, k[:, None])).abs() / (W[None] - W[k][:, None]).norm(dim=2)).scatter(
        1, k[:, None], float("inf")).min(1).values
    res = run_metric("boundary_distance", model, data, n=None, candidates=4).scalars
    right = k == y
    assert 0 < right.sum() < len(y)
    assert res["boundary.all.success_rate"] == 1.0
    assert res["boundary.all.l2"] == pytest.approx(1.02 * d.mean().item(), rel=1e-9)
    assert res["boundary.all.l2_normalized"] == pytest.approx(1.02 * d.mean().item() / 0.25, rel=1e-9)
    # The current average: correctly classified, fooled inputs only, in [0, 1] pixel units.
    assert res["boundary.l2"] == pytest.approx(1.02 * d[right].mean().item(), rel=1e-9)
    assert res["boundary.success_rate"] == 1.0 and res["boundary.n"] == right.sum().item()


def test_normalized_units_use_the_models_own_std(trained, mnist_small):
    """The StdCNN normalizes with MNIST's σ = 0.3081: its normalized distances are the pixel
    ones divided by it (one channel)."""
    res = run_metric("boundary_distance", trained, mnist_small, n=40, steps=50).scalars
    assert res["boundary.all.l2_normalized"] == pytest.approx(res["boundary.all.l2"] / 0.3081, rel=1e-5)
    assert res["boundary.all.success_rate"] == 1.0


class BackwardRows(nn.Module):
    """Wraps a model and counts the logit rows every backward pass goes through."""

    def __init__(self, model):
        super().__init__()
        self.model, self.rows = model, 0

    def forward(self, x):
        out = self.model(x)
        if out.requires_grad:
            out.register_hook(lambda g: setattr(self, "rows", self.rows + g.shape[0]))
        return out


@pytest.mark.parametrize("box", ["clip", "mask"])
@pytest.mark.parametrize("track,band", [(2, None), (3, 2.0)])
def test_tracking_the_nearest_candidates_keeps_every_distance_and_cuts_backward_passes(
        trained, mnist_small, box, track, band):
    """`track=2` linearizes, after the first step, only the two candidates whose boundary looks
    nearest (with `band`, the ones beyond the nearest only while they look close); it must
    find the same perturbation as every candidate at every step (the original), with far
    fewer backward passes (clip creeps for many steps after the first)."""
    x, y = mnist_small.x_test[:60], mnist_small.y_test[:60]
    full, fast = BackwardRows(trained), BackwardRows(trained)
    a = deepfool_batched(full, x, y, box=box, track=None)
    b = deepfool_batched(fast, x, y, box=box, track=track, band=band)
    assert torch.equal(a.fooled, b.fooled) and torch.equal(a.steps, b.steps)
    da, db = (a.adv - x).flatten(1).norm(dim=1), (b.adv - x).flatten(1).norm(dim=1)
    assert torch.allclose(da, db, rtol=1e-4, atol=1e-6)
    assert a.steps.sum() > len(x)             # more than one step per image: tracking can bind
    # clip creeps up to the boundary in many steps, mask takes about two per image
    assert fast.rows < (0.5 if box == "clip" else 0.8) * full.rows


def test_a_fooled_image_costs_at_most_a_ninth_of_its_backward_passes(trained, mnist_small):
    """An image is checked at the forward pass of each step; the images found fooled there get
    backward passes only while those cost less than a second forward over the others (at most
    1/9 of a step's rows with 9 backward passes), so the backward rows stay within
    10 x 9 per step taken. Taking them for every checked image (the old way) costs 9 per step
    plus 9 per image fooled after a step."""
    x, y = mnist_small.x_test[:60], mnist_small.y_test[:60]
    counted = BackwardRows(trained)
    res = deepfool_batched(counted, x, y, box="mask", candidates=10, track=None)
    steps, stepped = int(res.steps.sum()), int(((res.steps > 0) & res.fooled).sum())
    assert counted.rows <= 9 * steps + steps
    assert 9 * (steps + stepped) > 9 * steps + steps      # the bound would fail the old way


def test_the_band_linearizes_a_second_class_only_where_it_looks_close(trained, mnist_small):
    """Under clip most creeping steps have one clear nearest class: the band (the default)
    skips the second class's backward there, which track 2 alone always pays for."""
    x, y = mnist_small.x_test[:60], mnist_small.y_test[:60]
    two, banded = BackwardRows(trained), BackwardRows(trained)
    a = deepfool_batched(two, x, y, box="clip", track=2, band=None)
    b = deepfool_batched(banded, x, y, box="clip")
    assert torch.equal(a.steps, b.steps)
    assert torch.allclose((a.adv - x).flatten(1).norm(dim=1), (b.adv - x).flatten(1).norm(dim=1), rtol=1e-4)
    assert banded.rows < 0.85 * two.rows


def test_track_must_be_positive(trained, mnist_small):
    with pytest.raises(ValueError, match="track"):
        deepfool_batched(trained, mnist_small.x_test[:4], track=0)
    with pytest.raises(ValueError, match="band"):
        deepfool_batched(trained, mnist_small.x_test[:4], band=0.5)
