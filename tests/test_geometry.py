"""Perturbation PCA, covariance functions and long-range-correlated noise."""

from __future__ import annotations

import math

import pytest
import torch

from raystudy.metrics.base import EvalContext, predict
from raystudy.metrics.geometry import (
    LRCNoiseOptions, PerturbationCovarianceOptions, PerturbationPCAOptions, axial_profile,
    covariance_function, decay_length, lrc_noise, lrc_sample, perturbation_covariance,
    perturbation_pca, principal_angles)

from test_universal import train_small


@pytest.fixture(scope="module")
def trained(mnist_small):
    return train_small(mnist_small)


def brute_covariance(z: torch.Tensor, m: int) -> torch.Tensor:
    n, c, h, w = z.shape
    out = torch.zeros(2 * m + 1, 2 * m + 1, dtype=torch.float64)
    for dy in range(-m, m + 1):
        for dx in range(-m, m + 1):
            total, count = 0.0, 0
            for py in range(h):
                for px in range(w):
                    qy, qx = py + dy, px + dx
                    if 0 <= qy < h and 0 <= qx < w:
                        total += (z[:, :, py, px].double() * z[:, :, qy, qx].double()).sum().item()
                        count += n * c
            out[dy + m, dx + m] = total / count
    return out


def test_covariance_function_equals_the_pairwise_average():
    z = torch.randn(3, 2, 5, 6, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(covariance_function(z, 3), brute_covariance(z, 3), rtol=1e-9, atol=1e-12)


def test_white_noise_covariance_function_is_a_delta():
    z = torch.randn(400, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    cf = covariance_function(z, 5)
    m = 5
    assert cf[m, m].item() == pytest.approx(1.0, abs=0.02)
    off = cf.clone()
    off[m, m] = 0
    # ~4e4+ pairs per lag: the standard error is <= 0.006.
    assert off.abs().max().item() < 0.03
    assert decay_length(axial_profile(cf)) < 1.0


def test_decay_length_of_an_exponential_profile():
    d = torch.arange(0, 10, dtype=torch.float64)
    assert decay_length(torch.exp(-d / 3.0)) == pytest.approx(3.0, abs=1e-9)
    assert decay_length(2.0 * torch.exp(-d / 2.5)) == pytest.approx(2.5, abs=0.05)
    assert math.isnan(decay_length(torch.ones(5)))


def test_lrc_noise_has_the_declared_covariance():
    """The sampler's covariance is exp(-‖Δ‖/λ) with unit variance; the estimator finds it."""
    g = torch.Generator().manual_seed(2)
    z = lrc_sample((3000, 1, 12, 12), decay=3.0, generator=g)
    prof = axial_profile(covariance_function(z, 6))
    want = torch.exp(-torch.arange(7, dtype=torch.float64) / 3.0)
    torch.testing.assert_close(prof, want, atol=0.04, rtol=0)
    assert decay_length(prof) == pytest.approx(3.0, abs=0.3)
    # Diagonal neighbours: distance √2, not 2 (Euclidean displacement).
    cf = covariance_function(z, 2)
    assert cf[3, 3].item() == pytest.approx(math.exp(-math.sqrt(2) / 3.0), abs=0.04)


def test_lrc_channel_correlation():
    g = torch.Generator().manual_seed(3)
    z = lrc_sample((4000, 3, 4, 4), decay=1.0, channel_correlation=0.6, generator=g)
    c = (z[:, 0] * z[:, 1]).mean().item()
    assert c == pytest.approx(0.6, abs=0.05)
    assert (z[:, 2] ** 2).mean().item() == pytest.approx(1.0, abs=0.05)


def test_principal_angles_closed_forms():
    g = torch.Generator().manual_seed(4)
    q, _ = torch.linalg.qr(torch.randn(20, 20, generator=g, dtype=torch.float64))
    a, comp = q[:, :5], q[:, 5:]
    assert principal_angles(a, a).max().item() < 1e-4
    # Another basis of the same subspace: still 0.
    mix = torch.randn(5, 5, generator=g, dtype=torch.float64)
    assert principal_angles(a, a @ mix).max().item() < 1e-4
    torch.testing.assert_close(principal_angles(a, comp[:, :5]), torch.full((5,), 90.0, dtype=torch.float64))
    torch.testing.assert_close(principal_angles(a, comp), torch.full((5,), 90.0, dtype=torch.float64))
    # Two planes in R^3 sharing e1 and tilted by t around it: angles (0, t).
    t = math.radians(30)
    p1 = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]], dtype=torch.float64).T
    p2 = torch.tensor([[1.0, 0, 0], [0, math.cos(t), math.sin(t)]], dtype=torch.float64).T
    torch.testing.assert_close(principal_angles(p1, p2), torch.tensor([0.0, 30.0], dtype=torch.float64),
                               atol=1e-4, rtol=0)


def test_perturbation_pca_on_mnist(trained, mnist_small):
    ctx = EvalContext(model=trained, data=mnist_small, device=torch.device("cpu"))
    o = PerturbationPCAOptions(attack="fgsm", eps=0.1, rotation=10, n=200, k=5)
    res = perturbation_pca(ctx, o)
    angles = [r["angle"] for r in res.curves]
    assert len(angles) == 5 and angles == sorted(angles)
    assert all(0 <= a <= 90 for a in angles)
    assert res.scalars["perturbation_pca.min_angle"] == angles[0]
    assert 0 < res.scalars["perturbation_pca.adversarial_energy"] < 1
    # Two random 5-subspaces of R^784 are nearly orthogonal: the reference is close to 90°.
    assert res.scalars["perturbation_pca.random_min_angle"] > 75
    # Seeded: a second run gives the same angles.
    assert perturbation_pca(ctx, o).scalars == res.scalars


def test_perturbation_covariance_curves(trained, mnist_small):
    """The curves are the axial covariance functions of the (centred) perturbations and of
    the centred data, normalized at displacement 0, and the decay lengths are theirs."""
    from raystudy.metrics.geometry import _unit, adversarial_perturbations
    ctx = EvalContext(model=trained, data=mnist_small, device=torch.device("cpu"))
    o = PerturbationCovarianceOptions(attack="pgd", eps=0.1, steps=5, n=150, max_shift=8)
    res = perturbation_covariance(ctx, o)
    x, y = ctx.subset("test", 150)
    adv = _unit(adversarial_perturbations(trained, x, y, o, seed=0))
    for name, z in (("pgd", adv - adv.mean(0)), ("data", x - x.mean(0))):
        prof = axial_profile(covariance_function(z, 8))
        rows = [r for r in res.curves if r["metric"] == f"perturbation_covariance.{name}"]
        assert [r["x"] for r in rows] == list(range(9))
        torch.testing.assert_close(torch.tensor([r["covariance"] for r in rows], dtype=torch.float64),
                                   prof / prof[0])
        assert res.scalars[f"perturbation_covariance.{name}.decay_length"] == pytest.approx(decay_length(prof))
        assert 0 < decay_length(prof) < 8


def test_lrc_noise_worst_of_k(trained, mnist_small):
    ctx = EvalContext(model=trained, data=mnist_small, device=torch.device("cpu"))
    x, y = ctx.subset("test", 200)
    clean = (predict(trained, x) == y).float().mean().item()
    k10 = lrc_noise(ctx, LRCNoiseOptions(decay_lengths=[4.0], strengths=[0.0, 0.3, 0.6], k=6, n=200))
    k1 = lrc_noise(ctx, LRCNoiseOptions(decay_lengths=[4.0], strengths=[0.0, 0.3, 0.6], k=1, n=200))
    a10 = {r["x"]: r["accuracy"] for r in k10.curves}
    a1 = {r["x"]: r["accuracy"] for r in k1.curves}
    assert a10[0.0] == pytest.approx(clean) and a1[0.0] == pytest.approx(clean)
    # The first of the k draws is the single draw: the worst of more draws is never better.
    assert all(a10[s] <= a1[s] for s in a1)
    assert a10[0.6] < clean
    assert k10.scalars["lrc_noise.l4.accuracy"] == a10[0.6]
