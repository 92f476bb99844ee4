"""SVD-Universal and universal invariant directions."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from raystudy.metrics.base import EvalContext
from raystudy.metrics.universal import (
    InvariantDirectionsOptions, SVDUniversalOptions, invariant_directions,
    svd_universal, unsigned_angle, universal_direction)


def make_model(data, seed: int = 0) -> nn.Module:
    from raystudy.models import build_model
    from raystudy.registry import MODELS
    from raystudy.spec.validate import Named
    torch.manual_seed(seed)
    e = MODELS.get("stdcnn_mnist")
    # A narrow StdCNN: the same architecture, trained in seconds on a shared CPU.
    opts = e.schema(channels=[8, 8, 16, 16], hidden=64)
    return build_model(Named("stdcnn_mnist", opts, e), data.info)


def train_small(data, epochs: int = 1, seed: int = 0) -> nn.Module:
    """The MNIST StdCNN, 1 epoch of Adam on the 1,000-digit fixture (a few seconds)."""
    model = make_model(data, seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(data.x_train), generator=g)
        for i in range(0, len(perm), 32):
            idx = perm[i:i + 32]
            loss = nn.functional.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def trained(mnist_small):
    return train_small(mnist_small)


def test_shared_component_is_recovered():
    """Directions sharing one component (random sign, random strength, noise as large as
    the signal) -> the top singular vector is that component."""
    g = torch.Generator().manual_seed(0)
    d, n = 784, 64
    u = torch.randn(d, generator=g)
    u /= u.norm()
    signs = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    strength = 0.5 + torch.rand(n, generator=g)
    noise = torch.randn(n, d, generator=g)
    noise = noise / noise.norm(dim=1, keepdim=True)
    dirs = (signs * strength)[:, None] * u + noise
    v, s = universal_direction(dirs.reshape(n, 1, 28, 28))
    assert v.shape == (1, 28, 28)
    assert abs(v.norm().item() - 1) < 1e-5
    assert (s[:-1] >= s[1:]).all()
    assert abs(v.flatten() @ u) > 0.99
    # With random signs the plain mean of the directions does not find it: the SVD matters.
    mean = dirs.mean(0)
    assert abs(mean @ u) / mean.norm() < 0.9


def test_zero_directions_are_dropped():
    u = torch.zeros(5, 10)
    u[0, 3] = 2.0
    v, _ = universal_direction(u)
    assert abs(abs(v[3].item()) - 1) < 1e-6
    with pytest.raises(ValueError):
        universal_direction(torch.zeros(3, 4))


def test_universal_beats_random_of_same_norm(trained, mnist_small, tmp_path):
    ctx = EvalContext(model=trained, data=mnist_small, device=torch.device("cpu"), artifacts=tmp_path)
    o = SVDUniversalOptions(attacks=["fgsm", "gradient", "deepfool"], n_fit=64, n_eval=300, l2=[0, 3, 6],
                            linf=[0.2], random_draws=1, deepfool_steps=10)
    was_training = trained.training
    res = svd_universal(ctx, o)
    assert trained.training == was_training
    rows = {(r["metric"], r["x"]): r for r in res.curves}
    for a in ("fgsm", "gradient", "deepfool"):
        zero = rows[(f"svd_universal.{a}", 0.0)]
        assert zero["fooling_rate"] == 0 and zero["fooling_rate_random"] == 0
        assert zero["accuracy"] == pytest.approx(res.scalars["svd_universal.clean_accuracy"])
        top = rows[(f"svd_universal.{a}", 6.0)]
        assert top["fooling_rate"] > top["fooling_rate_random"] + 0.1, top
        assert res.scalars[f"svd_universal.{a}.fooling_rate"] == top["fooling_rate"]
        assert f"svd_universal.{a}.linf.fooling_rate" in res.scalars
        saved = torch.load(tmp_path / "svd_universal" / f"{a}.pt", weights_only=True)
        assert saved["direction"].shape == (1, 28, 28)
        assert saved["direction"].norm().item() == pytest.approx(1.0, abs=1e-5)
    # The fooling rate of the universal direction grows with its norm.
    fr = [rows[("svd_universal.fgsm", n)]["fooling_rate"] for n in (0.0, 3.0, 6.0)]
    assert fr == sorted(fr)


def test_options_reject_bad_input():
    with pytest.raises(ValueError, match="at_l2"):
        SVDUniversalOptions(l2=[1, 2], at_l2=3)
    with pytest.raises(ValueError):
        SVDUniversalOptions(linf=[2.0])            # ε outside [0, 1]
    with pytest.raises(ValueError):
        SVDUniversalOptions(attacks=["cw"])
    with pytest.raises(ValueError, match="moves nothing"):
        InvariantDirectionsOptions(rotations=[0, 30])


def test_unsigned_angle():
    u = torch.tensor([1.0, 0.0, 0.0])
    assert unsigned_angle(u, -2 * u)[0] == pytest.approx(0.0, abs=1e-6)
    assert unsigned_angle(u, torch.tensor([0.0, 3.0, 0.0]))[0] == pytest.approx(90.0)
    assert unsigned_angle(u, torch.tensor([1.0, 1.0, 0.0]))[0] == pytest.approx(45.0)


def test_invariant_direction_angle_matches_saved_directions(trained, mnist_small, tmp_path):
    """The angle reported is the angle between the universal invariant direction and the
    SVD-Universal direction of the same images (both saved as artifacts)."""
    ctx = EvalContext(model=trained, data=mnist_small, device=torch.device("cpu"), artifacts=tmp_path)
    svd_universal(ctx, SVDUniversalOptions(attacks=["fgsm"], n_fit=64, n_eval=10, l2=[1.0], random_draws=1))
    res = invariant_directions(ctx, InvariantDirectionsOptions(rotations=[30, 180], n=64, attack="fgsm"))
    assert [r["x"] for r in res.curves] == [30.0, 180.0]
    v = torch.load(tmp_path / "svd_universal" / "fgsm.pt", weights_only=True)["direction"]
    u = torch.load(tmp_path / "invariant_directions" / "rot180_t0.pt", weights_only=True)["direction"]
    angle, _ = unsigned_angle(u, v)
    assert res.scalars["invariant_directions.angle"] == pytest.approx(angle, abs=1e-3)
    assert 0.0 <= angle <= 90.0
    # The invariant direction is a property of the data alone: another (untrained) model
    # gets the same one, but a different adversarial direction and angle.
    other = tmp_path / "other"
    ctx2 = EvalContext(model=make_model(mnist_small, seed=5).eval(), data=mnist_small,
                       device=torch.device("cpu"), artifacts=other)
    res2 = invariant_directions(ctx2, InvariantDirectionsOptions(rotations=[30, 180], n=64, attack="fgsm"))
    u2 = torch.load(other / "invariant_directions" / "rot180_t0.pt", weights_only=True)["direction"]
    torch.testing.assert_close(u2, u)
    assert res2.scalars["invariant_directions.angle"] != pytest.approx(angle, abs=1e-3)


class _Threshold(nn.Module):
    """Two classes on 1x2x2 images: class 1 when pixel 0 is above 0.5 (a linear boundary)."""

    def forward(self, x):
        z = 10.0 * (x.flatten(1)[:, :1] - 0.5)
        return torch.cat([torch.zeros_like(z), z], 1)


def test_sign_is_chosen_on_the_fit_images_not_on_the_scored_ones(tmp_path):
    """Issue 17, item 6. The fit images sit just below the boundary (class 0), the scored ones
    just above it (class 1); every gradient direction is +e0, so ±v is ±e0. The fit images pick
    +e0 (it fools all of them), which pushes every scored image further into its class: fooling
    rate 0. Choosing the sign on the scored images (the old rule) would report 1."""
    from raystudy.data import DataInfo, DeviceData
    g = torch.Generator().manual_seed(0)
    n_fit, n_eval = 8, 12
    x = 0.2 + 0.6 * torch.rand(n_fit + n_eval, 1, 2, 2, generator=g)
    x[:n_fit, 0, 0, 0], x[n_fit:, 0, 0, 0] = 0.45, 0.55
    y = torch.cat([torch.zeros(n_fit), torch.ones(n_eval)]).long()
    e = torch.empty(0, 1, 2, 2)
    data = DeviceData("toy", e, y[:0], e, y[:0], x, y, DataInfo(1, 2, 2, 2, (0.5,), (0.25,)))
    ctx = EvalContext(model=_Threshold(), data=data, device=torch.device("cpu"), artifacts=tmp_path)
    o = SVDUniversalOptions(attacks=["gradient"], n_fit=n_fit, n_eval=n_eval, l2=[0.2], random_draws=1)
    res = svd_universal(ctx, o)
    assert res.scalars["svd_universal.clean_accuracy"] == 1.0
    assert res.scalars["svd_universal.gradient.fooling_rate"] == 0.0
    assert res.scalars["svd_universal.gradient.accuracy"] == 1.0
    # The perturbation applied is +0.2·e0: the chosen sign times the saved direction.
    v = torch.load(tmp_path / "svd_universal" / "gradient.pt", weights_only=True)["direction"]
    assert torch.allclose(res.curves[0]["sign"] * v.flatten(), torch.tensor([1.0, 0, 0, 0]), atol=1e-6)
