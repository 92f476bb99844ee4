"""Invariance profiles: exact invariances, the paper's conventions, seeded transforms."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from raystudy.augment import transform
from raystudy.errors import StudyError
from raystudy.metrics import EvalContext, predict
from raystudy.metrics.invariance import _params
from raystudy.spec.validate import validate_trial


from helpers import run_metric, train_stdcnn  # noqa: E402


class C4Average(nn.Module):
    """Logits averaged over the four 90° rotations of the input: exactly C4-invariant.
    The four terms are sorted before summing, so the float sum does not depend on
    which rotation came first."""

    def __init__(self, base):
        super().__init__()
        self.base = base

    def forward(self, x):
        n = x.shape[0]
        rots = torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in range(4)])
        logits = self.base(rots).reshape(4, n, -1)
        return logits.sort(dim=0).values.sum(0) / 4


class PixelMass(nn.Module):
    """Classifies by total ink alone (nearest of ten ink levels): unchanged by any
    shift that keeps the digit inside the image."""

    def __init__(self, x):
        super().__init__()
        mass = x.sum(dim=(1, 2, 3))
        self.register_buffer("centers", torch.quantile(mass, torch.linspace(0.05, 0.95, 10)))

    def forward(self, x):
        return -(x.sum(dim=(1, 2, 3))[:, None] - self.centers).abs()


@pytest.fixture(scope="module")
def trained(mnist_small):
    return train_stdcnn(mnist_small)


def run(model, data, /, **opts):
    return run_metric("invariance", model, data, **opts)


def curve(res, metric):
    return {r["x"]: r for r in res.curves if r["metric"] == metric}


def test_c4_averaged_model_is_exactly_invariant_at_multiples_of_90(trained, mnist_small):
    c4 = C4Average(trained).eval()
    res = run(c4, mnist_small, angles=[0, 90, 180, 270, -90], n=200, t180=False)
    rows = curve(res, "invariance.rotation.fixed")
    assert sorted(rows) == [-90.0, 0.0, 90.0, 180.0, 270.0]
    assert all(r["consistency"] == 1.0 for r in rows.values())
    assert res.scalars["invariance.rotation.fixed.min"] == 1.0
    # Accuracy is the same at every multiple of 90° (the predictions are).
    assert len({r["accuracy"] for r in rows.values()}) == 1
    # The check has teeth: the model predicts many classes, and its plain base is far
    # from invariant.
    assert len(predict(c4, mnist_small.x_test[:200]).unique()) >= 5
    base = run(trained, mnist_small, angles=[90], n=200, t180=False)
    assert base.scalars["invariance.rotation.fixed.min"] < 0.6


def test_theta_zero_is_clean_and_profile_mostly_falls(trained, mnist_small):
    res = run(trained, mnist_small, thetas=[0, 30, 90, 180], n=200)
    rows = curve(res, "invariance.rotation")
    ctx = EvalContext(trained, mnist_small, torch.device("cpu"))
    x, y = ctx.subset("test", 200, 0)
    clean = (predict(trained, x) == y).float().mean().item()
    assert rows[0.0]["consistency"] == 1.0
    assert rows[0.0]["accuracy"] == pytest.approx(clean, abs=1e-9)
    assert rows[180.0]["consistency"] < rows[30.0]["consistency"] < 1.0
    # The CuSP table's T180 is the θ = 180 point of the profile ...
    assert res.scalars["spatial_accuracy.t180"] == rows[180.0]["accuracy"]
    # ... and the same draws when 180 is not on the grid.
    other = run(trained, mnist_small, thetas=[0, 90], n=200)
    assert other.scalars["spatial_accuracy.t180"] == res.scalars["spatial_accuracy.t180"]
    assert curve(other, "invariance.rotation")[90.0] == rows[90.0]


def test_transforms_are_seeded_and_shared_across_thetas():
    a30, _ = _params("rotation", 30.0, 500, 28, seed=7, device="cpu")
    a180, _ = _params("rotation", 180.0, 500, 28, seed=7, device="cpu")
    assert a180.abs().max() <= 180 and a180.abs().max() > 170
    # Common random numbers: one uniform draw per image, scaled by θ.
    torch.testing.assert_close(a30 * 6, a180)
    b180, _ = _params("rotation", 180.0, 500, 28, seed=8, device="cpu")
    assert not torch.equal(a180, b180)


def test_aug_t_and_aug_rt_conventions():
    # Aug-T: i is a fraction of the image size; i = 0.1 on a 28-pixel image is ±3 px.
    ang, sh = _params("translation", 0.1, 2000, 28, seed=0, device="cpu")
    assert ang is None and sh.abs().max() == 3 and set(sh.unique().tolist()) == {-3, -2, -1, 0, 1, 2, 3}
    # Aug-RT: rotation within ±i·180°, plus the same translation.
    ang, sh = _params("rotation_translation", 0.25, 2000, 28, seed=0, device="cpu")
    assert 40 < ang.abs().max() <= 45 and sh.abs().max() == 7


def test_shift_invariant_model_has_translation_invariance_one(mnist_small):
    # Keep the digits that sit inside a 2-pixel black frame: ±2 px shifts keep all ink.
    x, y = mnist_small.x_test, mnist_small.y_test
    frame = x.clone()
    frame[..., 2:-2, 2:-2] = 0
    inside = frame.sum(dim=(1, 2, 3)) == 0
    assert inside.sum() > 300
    data = dataclasses.replace(mnist_small, x_test=x[inside], y_test=y[inside])
    model = PixelMass(x[inside]).eval()
    res = run(model, data, kind="translation", levels=[0, 1 / 28, 2 / 28], n=300)
    rows = curve(res, "invariance.translation")
    assert [rows[v]["consistency"] for v in sorted(rows)] == [1.0, 1.0, 1.0]
    assert len(predict(model, x[inside]).unique()) == 10  # not a constant predictor
    # A 14-pixel range pushes ink out of the image and the prediction moves.
    far = run(model, data, kind="translation", levels=[0.5], n=300)
    assert curve(far, "invariance.translation")[0.5]["consistency"] < 0.9
    assert "spatial_accuracy.t180" not in res.scalars


def test_model_mode_is_restored(trained, mnist_small):
    trained.train()
    try:
        run(trained, mnist_small, thetas=[0, 45], n=20)
        assert trained.training
    finally:
        trained.eval()


def test_transform_matches_rot90_so_fixed_angles_are_exact(mnist_small):
    x = mnist_small.x_test[:5]
    for k in range(4):
        assert torch.equal(transform(x, torch.full((5,), 90.0 * k)), torch.rot90(x, k, dims=(2, 3)))


def eval_item(item):
    return validate_trial({"model": {"arch": "stdcnn_mnist"}, "evaluate": [item]})


def test_option_errors():
    eval_item({"invariance": {"kind": "rotation_translation", "levels": [0, "1/10", 1]}})
    with pytest.raises(StudyError, match="'levels' is for translation"):
        eval_item({"invariance": {"levels": [0.1]}})
    with pytest.raises(StudyError, match="'thetas' is for rotation"):
        eval_item({"invariance": {"kind": "translation", "thetas": [10]}})
    with pytest.raises(StudyError, match=r"outside \[0, 180\]"):
        eval_item({"invariance": {"thetas": [0, 200]}})
    with pytest.raises(StudyError, match=r"evaluate\.0\.invariance\.kind"):
        eval_item({"invariance": {"kind": "rotate"}})
