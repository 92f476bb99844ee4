"""The shared covariance estimate (raystudy.covariance) and what SGR / GN do with it: the
centred estimate and the mean's energy share, the PSD projection of cropped kernels, and
per-example input gradients under BatchNorm."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from raystudy.covariance import (crop_radius, dense_from_displacement, displacement_covariance,
                                 mean_energy_fraction, min_eigenvalue, normalized, pooled_covariance_function,
                                 project_psd)
from raystudy.data import DataInfo
from raystudy.errors import StudyError
from raystudy.methods.base import TrainState
from raystudy.methods.regularizers import penalty_gradients
from raystudy.models.stdcnn import StdCNN, StdCNNOptions
from raystudy.registry import METHODS
from raystudy.spec.schema import AugmentSpec

INFO = DataInfo(1, 12, 12, 4, (0.5,), (0.25,))


def method(name: str, **opts):
    e = METHODS.get(name)
    return e.obj(e.schema.model_validate(opts), INFO)


def state(seed: int = 0) -> TrainState:
    return TrainState(epoch=0, stage_epoch=0, lr=0.1, lr_stepped=False, milestone_index=0,
                      augment=AugmentSpec(), device=torch.device("cpu"), generator=torch.Generator().manual_seed(seed))


def small_cnn(seed: int = 0, batchnorm: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    return StdCNN(StdCNNOptions(channels=[4, 4, 8, 8], hidden=16, batchnorm=batchnorm), INFO).double()


def batch(n: int = 16, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 12, 12, generator=g, dtype=torch.float64), torch.randint(0, 4, (n,), generator=g)


def one_signed(n: int, c: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Perturbations with a large common positive part, like FGSM on MNIST's black background."""
    g = torch.Generator().manual_seed(seed)
    return 1.0 + 0.5 * torch.randn(n, c, h, w, generator=g, dtype=torch.float64)


def _displacement_average(m: torch.Tensor, c: int, h: int, w: int) -> torch.Tensor:
    """H·W-normalized sum of a dense C·H·W matrix over each pixel displacement (the biased map)."""
    k = torch.zeros(c, c, 2 * h - 1, 2 * w - 1, dtype=m.dtype)
    m = m.view(c, h, w, c, h, w)
    for pr in range(h):
        for pc in range(w):
            for qr in range(h):
                for qc in range(w):
                    k[:, :, qr - pr + h - 1, qc - pc + w - 1] += m[:, pr, pc, :, qr, qc]
    return k / (h * w)


# ------------------------------------------------------------------ centring (issue 17.2)

@pytest.mark.parametrize("c,h,w", [(1, 5, 4), (2, 4, 3)])
def test_centred_covariance_function_is_the_displacement_form_of_the_covariance(c, h, w):
    delta = one_signed(9, c, h, w, seed=c)
    flat = delta.flatten(1)
    mu = flat.mean(0)
    cov = flat.T @ flat / len(flat) - torch.outer(mu, mu)          # E[δδᵀ] − μμᵀ
    want = _displacement_average(cov, c, h, w)
    got = displacement_covariance(delta, "biased", center=True)
    assert torch.allclose(got, want, atol=1e-12)
    # The same as the raw moments of the centred perturbations; not the raw moments themselves.
    assert torch.allclose(got, displacement_covariance(delta - delta.mean(0, keepdim=True)), atol=1e-12)
    assert not torch.allclose(got, displacement_covariance(delta), atol=1e-3)


def test_pooled_covariance_function_averages_every_pixel_pair_at_each_displacement():
    delta = one_signed(5, 2, 6, 5)
    m = 2
    z = delta - delta.mean(0, keepdim=True)
    got = pooled_covariance_function(delta, m, "unbiased", center=True)
    assert got.shape == (2 * m + 1, 2 * m + 1)
    for dy in range(-m, m + 1):
        for dx in range(-m, m + 1):
            prods = [z[:, :, r, q] * z[:, :, r + dy, q + dx] for r in range(6) for q in range(5)
                     if 0 <= r + dy < 6 and 0 <= q + dx < 5]
            want = torch.stack(prods).mean()                        # over pairs, images, channels
            assert torch.allclose(got[dy + m, dx + m], want, atol=1e-12)


def test_mean_energy_fraction_is_the_means_share_of_the_energy():
    # δₙ = a ± b with a ⟂ b: the mean is a, E‖δ‖² = ‖a‖² + ‖b‖².
    a = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    b = torch.zeros_like(a)
    a[..., :2, :] = 1.0                  # ‖a‖² = 8
    b[..., 2:, :2] = 1.0                 # ‖b‖² = 4
    delta = torch.cat([a + b, a - b, a + b, a - b])
    assert mean_energy_fraction(delta).item() == pytest.approx(8 / 12)
    assert mean_energy_fraction(torch.cat([b, -b])).item() == pytest.approx(0.0)


def test_sgr_centred_sigma_is_the_running_covariance_and_logs_the_means_energy():
    model = small_cnn()
    (x1, y1), (x2, y2) = batch(seed=1), batch(seed=2)
    st = state()
    raw, cen = method("sgr", source="sign", decay=0.8), method("sgr", source="sign", decay=0.8, center=True)
    deltas = []
    for x, y in ((x1, y1), (x2, y2)):
        for m in (raw, cen):
            m._update_scale(x)
            m.prepare(model, x, y, st)
        deltas.append(normalized(cen.perturbations(model, x, y, st).float()))
    # After one batch: the batch's centred estimate, by the function the metric uses too.
    k1 = displacement_covariance(deltas[0], "biased", center=True)
    m1, m2 = deltas[0].mean(0), deltas[1].mean(0)
    mu = 0.8 * m1 + 0.2 * m2
    # Running raw moments minus the running mean's term: dense E[δδᵀ] − μμᵀ, displaced.
    dense_raw = sum(wt * d.flatten(1).double().T @ d.flatten(1).double() / len(d)
                    for wt, d in ((0.8, deltas[0]), (0.2, deltas[1])))
    want = _displacement_average(dense_raw - torch.outer(mu.flatten().double(), mu.flatten().double()), 1, 12, 12)
    assert torch.allclose(cen.effective.double(), want, atol=1e-6)
    assert torch.allclose(raw.effective.double(), _displacement_average(dense_raw, 1, 12, 12), atol=1e-6)
    assert not torch.allclose(cen.effective, raw.effective, atol=1e-4)
    frac = cen.epoch_log()["method.mean_energy_fraction"]
    assert frac == pytest.approx(float(mu.double().square().sum()), rel=1e-5)   # trace 1: unit perturbations
    assert raw.epoch_log()["method.mean_energy_fraction"] == pytest.approx(frac)
    assert 0 < frac < 1
    one = method("sgr", source="sign", center=True)
    one._update_scale(x1)
    one.prepare(model, x1, y1, st)
    assert torch.allclose(one.effective, k1.float(), atol=1e-7)


def test_sgr_centred_dense_form_is_the_covariance_matrix():
    model = small_cnn()
    x, y = batch()
    m = method("sgr", source="gradient", form="dense", center=True)
    m._update_scale(x)
    m.prepare(model, x, y, state())
    d = normalized(m.perturbations(model, x, y, state()).float()).flatten(1)
    mu = d.mean(0)
    assert torch.allclose(m.effective, d.T @ d / len(d) - torch.outer(mu, mu), atol=1e-7)
    assert torch.linalg.eigvalsh(m.effective.double()).min() > -1e-6


def test_sgr_state_with_the_running_mean_round_trips():
    model = small_cnn()
    x, y = batch()
    m = method("sgr", source="gradient", center=True)
    m.loss(model, x, y, state())
    m2 = method("sgr", source="gradient", center=True)
    m2.load_state_dict(m.state_dict())
    m2._update_scale(x)
    m2.hw = (12, 12)
    m2.effective = m2._effective()
    assert torch.equal(m2.mean, m.mean) and torch.allclose(m2.effective, m.effective)


# ------------------------------------------------------------------ PSD projection (17.3)

@pytest.mark.parametrize("c,h,w,r", [(1, 8, 7, 1), (1, 8, 8, 2), (2, 6, 7, 2)])
def test_projection_makes_a_cropped_indefinite_sigma_positive_semidefinite(c, h, w, r):
    k = crop_radius(displacement_covariance(normalized(one_signed(20, c, h, w))), r)
    before = torch.linalg.eigvalsh(dense_from_displacement(k, h, w)).min().item()
    assert before < -1e-3                                      # the crop rewards some gradients
    assert min_eigenvalue(k, h, w) <= before + 1e-12           # the embedding's bound
    kp, lo = project_psd(k, h, w)
    assert lo == pytest.approx(min_eigenvalue(k, h, w))
    dense = dense_from_displacement(kp, h, w)
    assert torch.allclose(dense, dense.T, atol=1e-12)
    assert torch.linalg.eigvalsh(dense).min().item() > -1e-12
    # A projection: projecting again changes nothing.
    again, lo2 = project_psd(kp, h, w)
    assert lo2 > -1e-12 and again is kp


def test_projection_leaves_a_psd_kernel_alone():
    k = displacement_covariance(normalized(one_signed(20, 2, 6, 5)))      # biased, uncropped: PSD
    kp, lo = project_psd(k, 6, 5)
    assert kp is k and lo > -1e-12


def test_sgr_with_a_radius_penalizes_every_gradient():
    model = small_cnn()
    x, y = batch()
    # A black background around the digit: FGSM's clipping leaves one-signed perturbations there.
    x = torch.nn.functional.pad(x[:, :, 3:9, 4:8], (4, 4, 3, 3))
    m = method("sgr", source="fgsm", eps=0.3, radius=2, scale="none")
    m._update_scale(x)
    m.prepare(model, x, y, state())
    cropped = dense_from_displacement(m.sigma.double(), 12, 12)
    lam, vec = torch.linalg.eigh(cropped)
    assert lam[0] < -1e-4                                      # what the penalty used before
    g = vec[:, 0].view(1, 1, 12, 12)
    assert (g * m.apply_sigma(g)).sum() >= -1e-9               # ½ gᵀΣg can no longer go negative
    assert m.epoch_log()["method.sigma_min_eig"] < 0
    assert torch.linalg.eigvalsh(dense_from_displacement(m.scaled_sigma().double(), 12, 12)).min() > -1e-6


# ----------------------------------------------------------------- BatchNorm (issue 17.4)

def test_bn_penalty_gradient_of_one_example_ignores_the_others():
    model = small_cnn(batchnorm=True).train()
    x, y = batch(8)
    x2 = x.clone()
    x2[5] = torch.rand(1, 12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    # Copies: each call's train-mode forward also moves the running statistics.
    _, _, g = penalty_gradients(copy.deepcopy(model), x, y)
    _, _, g2 = penalty_gradients(copy.deepcopy(model), x2, y)
    assert torch.allclose(g[:5], g2[:5], atol=1e-12) and torch.allclose(g[6:], g2[6:], atol=1e-12)
    assert not torch.allclose(g[5], g2[5])

    def train_mode_grad(xs):                                   # the old gradient: batch statistics
        xs = xs.clone().requires_grad_(True)
        return torch.autograd.grad(F.cross_entropy(model(xs), y, reduction="sum"), xs)[0]
    assert not torch.allclose(train_mode_grad(x)[0], train_mode_grad(x2)[0], atol=1e-8)
    assert model.training and all(m.training for m in model.modules())
    # The penalty's parameter gradient (double backprop) is the eval-mode BatchNorm one too,
    # though the train-mode forward moved the running statistics in between.
    m1, ev = copy.deepcopy(model), copy.deepcopy(model).eval()
    _, _, g1 = penalty_gradients(m1, x, y)
    xe = x.clone().requires_grad_(True)
    ge = torch.autograd.grad(F.cross_entropy(ev(xe), y, reduction="sum"), xe, create_graph=True)[0]
    assert not torch.equal(m1.features[1].running_mean, ev.features[1].running_mean)
    for a, b in zip(torch.autograd.grad(g1.square().sum(), list(m1.parameters())),
                    torch.autograd.grad(ge.square().sum(), list(ev.parameters()))):
        assert torch.allclose(a, b, atol=1e-12)


def test_gn_on_a_bn_model_trains_the_running_statistics_and_restores_modes():
    model = small_cnn(batchnorm=True).train()
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    before = bn.running_mean.clone()
    x, y = batch(8)
    loss, logs = method("gn", strength=1.0).loss(model, x, y, state())
    assert not torch.allclose(bn.running_mean, before)
    assert bn.num_batches_tracked.item() == 1                  # one train-mode forward per step
    assert all(m.training for m in model.modules())
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    # The CE is the train-mode one (batch statistics), as in natural training.
    ref = small_cnn(batchnorm=True).train()
    assert torch.allclose(logs["train_acc"], (ref(x).argmax(1) == y).float().mean())


def test_bn_without_running_statistics_is_refused_naming_the_method():
    model = small_cnn(batchnorm=True).train()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.track_running_stats = False
            m.running_mean = m.running_var = None
    x, y = batch(4)
    with pytest.raises(StudyError) as e:
        method("sgr", source="gradient").loss(model, x, y, state())
    assert str(e.value).startswith("train.method:") and "BatchNorm" in str(e.value)
