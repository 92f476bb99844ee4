"""The spatial adversary (Engstrom et al., 2019): grid, worst-of-k and random transforms, and
the joint (θ, ε) surface."""

from __future__ import annotations

import pytest
import torch

from raystudy.augment import transform
from raystudy.errors import StudyError
from raystudy.metrics import predict
from raystudy.metrics.spatial_attack import SpatialAttackOptions, first_failure, random_draws
from raystudy.spec.validate import validate_trial

from helpers import run_metric, train_stdcnn
from test_invariance import C4Average


@pytest.fixture(scope="module")
def trained(mnist_small):
    return train_stdcnn(mnist_small)


def run(model, data, /, **opts):
    return run_metric("spatial_attack", model, data, **opts)


def test_grid_of_quarter_turns_is_clean_accuracy_for_a_c4_invariant_model(trained, mnist_small):
    c4 = C4Average(trained).eval()
    x, y = mnist_small.x_test, mnist_small.y_test
    clean = (predict(c4, x) == y).float().mean().item()
    opts = dict(modes=["grid"], rotation=180, grid_angles=5, translation=0, n=None)   # -180, -90, 0, 90, 180
    res = run(c4, mnist_small, **opts)
    assert res.scalars["spatial_attack.grid.transforms"] == 5.0
    # Exactly: the nearest-neighbour gather turns by quarter turns without moving a pixel off the grid.
    assert res.scalars["spatial_attack.grid.accuracy"] == clean and clean > 0.2   # chance is 0.1
    # The check has teeth: the plain model is far from invariant to quarter turns.
    plain = (predict(trained, x) == y).float().mean().item()
    assert run(trained, mnist_small, **opts).scalars["spatial_attack.grid.accuracy"] < plain - 0.3


def test_worst_case_below_random_below_clean(trained, mnist_small):
    res = run(trained, mnist_small, n=300, k=10, grid_shifts=3, grid_angles=7)
    s = res.scalars
    clean = (predict(trained, mnist_small.x_test[:300]) == mnist_small.y_test[:300]).float().mean().item()
    assert s["spatial_attack.grid.transforms"] == 7 * 3 * 3
    assert s["spatial_attack.grid.accuracy"] <= s["spatial_attack.worst_of_k.accuracy"] \
        <= s["spatial_attack.random.accuracy"] <= clean
    assert s["spatial_attack.grid.accuracy"] < s["spatial_attack.random.accuracy"] - 0.05
    # The worst-of-k' curve starts at the random accuracy and never rises with k'.
    curve = [r["accuracy"] for r in sorted(res.curves, key=lambda r: r["x"])]
    assert len(curve) == 10 and curve[0] == s["spatial_attack.random.accuracy"]
    assert all(b <= a for a, b in zip(curve, curve[1:]))
    assert curve[-1] == s["spatial_attack.worst_of_k.accuracy"]


def test_first_failure_matches_a_transform_by_transform_loop(trained, mnist_small):
    x, y = mnist_small.x_test[:40], mnist_small.y_test[:40]
    o = SpatialAttackOptions(rotation=60, translation=4, k=6)
    angles, shifts = random_draws(o, len(x), o.k, x.device)
    wrong = torch.stack([predict(trained, transform(x, angles[t], shifts[t])) != y for t in range(o.k)])
    expected = torch.where(wrong.any(0), wrong.float().argmax(0), torch.tensor(o.k))
    for bs in (7, 40, 500):   # one transform per pass, several, all at once
        assert torch.equal(first_failure(trained, x, y, angles, shifts, bs), expected)


def test_grid_holds_whole_pixel_shifts():
    a, s = SpatialAttackOptions(rotation=30, translation=3, grid_angles=31).grid()
    assert len(a) == 31 * 7 * 7 and set(s[:, 0].tolist()) == set(range(-3, 4))
    a, s = SpatialAttackOptions(rotation=30, translation=3, grid_angles=31, grid_shifts=5).grid()
    assert sorted(set(s[:, 0].tolist())) == [-3, -2, 0, 2, 3] and len(a) == 31 * 25
    assert a.min() == -30 and a.max() == 30 and (a == 0).any()


def test_surface_rows_rotation_then_pgd(trained, mnist_small):
    c4 = C4Average(trained).eval()
    surface = {"angles": [0, 90, 180], "eps": [0, 0.1], "steps": 3, "random_start": False}
    res = run(c4, mnist_small, modes=["random"], n=100, surface=surface)
    rows = {(r["x"], r["eps"]): r for r in res.curves if r["metric"].startswith("spatial_attack.surface")}
    assert sorted(rows) == [(a, e) for a in (0.0, 90.0, 180.0) for e in (0.0, 0.1)]
    # One curve per ε (x = θ), each cell with its per-example outcomes.
    assert {r["metric"] for r in rows.values()} == {"spatial_attack.surface@0", "spatial_attack.surface@0.1"}
    outcomes = {(o["metric"], o["x"]): o["correct"] for o in res.outcomes}
    for (a, e), r in rows.items():
        assert outcomes[(r["metric"], a)].float().mean().item() == r["accuracy"] and r["n"] == 100
    clean = (predict(c4, mnist_small.x_test[:100]) == mnist_small.y_test[:100]).float().mean().item()
    assert rows[(0.0, 0.0)]["accuracy"] == clean
    assert rows[(0.0, 0.1)]["accuracy"] < clean and rows[(0.0, 0.1)]["alpha"] == pytest.approx(2.5 * 0.1 / 3)
    # An exactly C4-invariant model: PGD from a quarter-turned input is the quarter-turned PGD.
    for e in (0.0, 0.1):
        assert rows[(90.0, e)]["accuracy"] == rows[(0.0, e)]["accuracy"] == rows[(180.0, e)]["accuracy"]
    assert {r["x_title"] for r in rows.values()} == {"rotation θ (degrees), then L∞ PGD at ε"}


def test_options_errors():
    def item(opts):
        return validate_trial({"model": {"arch": "stdcnn_mnist"}, "evaluate": [{"spatial_attack": opts}]})
    item({"rotation": 30, "translation": 3, "surface": {"eps": ["8/255"]}})
    for bad, needle in (({"rotation": 0, "translation": 0}, "nothing to draw"), ({"modes": ["worst"]}, "modes"),
                        ({"rotation": 200}, "rotation"), ({"surface": {"eps": [2]}}, "surface.eps"),
                        ({"surface": {"stesp": 3}}, "stesp")):
        with pytest.raises(StudyError) as e:
            item(bad)
        assert needle in str(e.value), str(e.value)
