"""Training methods: the science of each loss (closed forms, identities, invariants)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from raystudy.data import DataInfo
from raystudy.errors import StudyError
from raystudy.methods.adversarial import fgsm, pgd, predicted_labels
from raystudy.methods.base import TrainState
from raystudy.methods.regularizers import (apply_displacement, crop_radius, dense_from_displacement,
                                           displacement_covariance, normalized)
from raystudy.methods.trades import trades_attack, trades_loss
from raystudy.models.stdcnn import StdCNN, StdCNNOptions
from raystudy.registry import METHODS
from raystudy.spec.schema import AugmentSpec

INFO = DataInfo(1, 12, 12, 4, (0.5,), (0.25,))


def method(name: str, **opts):
    e = METHODS.get(name)
    return e.obj(e.schema.model_validate(opts), INFO)


def state(seed: int = 0) -> TrainState:
    g = torch.Generator().manual_seed(seed)
    return TrainState(epoch=0, stage_epoch=0, lr=0.1, lr_stepped=False, milestone_index=0,
                      augment=AugmentSpec(), device=torch.device("cpu"), generator=g)


def small_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return StdCNN(StdCNNOptions(channels=[4, 4, 8, 8], hidden=16), INFO).double()


def batch(n: int = 16, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 12, 12, generator=g, dtype=torch.float64), torch.randint(0, 4, (n,), generator=g)


class Linear(nn.Module):
    """Softmax regression on flattened inputs: input gradients have a closed form."""

    def __init__(self, d: int, k: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(k, d, generator=g, dtype=torch.float64))
        self.b = nn.Parameter(torch.randn(k, generator=g, dtype=torch.float64))

    def forward(self, x):
        return x.flatten(1) @ self.w.T + self.b


# ------------------------------------------------------------------- attacks (training)

def test_fgsm_is_the_closed_form_on_softmax_regression():
    model = Linear(12, 3)
    x = torch.rand(5, 1, 3, 4, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 1, 0])
    p = torch.softmax(model(x), 1)
    grad = (p - F.one_hot(y, 3).double()) @ model.w            # ∇ₓ CE = Wᵀ(p − e_y)
    want = (x + 0.1 * grad.view_as(x).sign()).clamp(0, 1)
    assert torch.allclose(fgsm(model, x, y, 0.1), want)


def test_pgd_stays_in_the_ball_restores_train_mode_and_leaves_no_param_grads():
    model = small_cnn().train()
    x, y = batch()
    adv = pgd(model, x, y, eps=0.1, step_size=0.03, steps=5, generator=torch.Generator().manual_seed(0))
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    assert (adv - x).abs().max() <= 0.1 + 1e-12 and adv.min() >= 0 and adv.max() <= 1
    with torch.no_grad():
        assert F.cross_entropy(model(adv), y) > F.cross_entropy(model(x), y)


def test_predicted_labels_option_attacks_the_models_own_prediction():
    model = small_cnn()
    x, y = batch()
    m = method("fgsm_at", eps=0.05, labels="predicted", clean_weight=0.0)
    loss, _ = m.loss(model, x, y, state())
    adv = fgsm(model, x, predicted_labels(model, x), 0.05)
    assert torch.allclose(loss, F.cross_entropy(model(adv), y))
    m_true = method("fgsm_at", eps=0.05, clean_weight=0.0)
    loss_true, _ = m_true.loss(model, x, y, state())
    assert torch.allclose(loss_true, F.cross_entropy(model(fgsm(model, x, y, 0.05)), y))


def test_mixed_fraction_0_is_natural_and_fraction_1_is_fgsm_at():
    model = small_cnn()
    x, y = batch()
    l0, _ = method("mixed", fraction=0.0).loss(model, x, y, state())
    assert torch.allclose(l0, F.cross_entropy(model(x), y))
    l1, _ = method("mixed", fraction=1.0, eps=0.1, labels="true").loss(model, x, y, state())
    lf, _ = method("fgsm_at", eps=0.1, clean_weight=0.0).loss(model, x, y, state())
    assert torch.allclose(l1, lf)
    # Half: the first half of the (shuffled) batch is adversarial, the rest clean.
    lh, _ = method("mixed", fraction=0.5, eps=0.1, labels="true").loss(model, x, y, state())
    adv = fgsm(model, x[:8], y[:8], 0.1)
    assert torch.allclose(lh, F.cross_entropy(model(torch.cat([adv, x[8:]])), y))


def test_fgsm_at_default_is_goodfellows_half_clean_half_adversarial_loss():
    model = small_cnn()
    x, y = batch()
    m = method("fgsm_at", eps=0.1)
    loss, logs = m.loss(model, x, y, state())
    adv = fgsm(model, x, y, 0.1)
    # Goodfellow et al. (2015, Sec. 6): α·J(x) + (1 − α)·J(x + ε·sign(∇ₓJ)), α = 0.5.
    want = 0.5 * F.cross_entropy(model(x), y) + 0.5 * F.cross_entropy(model(adv), y)
    assert torch.allclose(loss, want)
    assert not torch.allclose(loss, F.cross_entropy(model(adv), y))     # the old, adversarial-only loss
    assert {"train_acc", "train_adv_acc"} <= set(logs)
    assert m.epoch_log() == {"method.eps": 0.1, "method.clean_weight": 0.5, "method.alpha": 0.1}
    l3, _ = method("fgsm_at", eps=0.1, clean_weight=0.25).loss(model, x, y, state())
    assert torch.allclose(l3, 0.25 * F.cross_entropy(model(x), y) + 0.75 * F.cross_entropy(model(adv), y))
    l1, _ = method("fgsm_at", eps=0.1, clean_weight=1.0).loss(model, x, y, state())
    assert torch.allclose(l1, F.cross_entropy(model(x), y))


def test_fgsm_rs_is_wong_et_als_random_init_step_on_softmax_regression():
    model = Linear(12, 3)
    x = torch.rand(6, 1, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    x[0, 0, 0] = 0.0                                     # pixels at the box edge get clipped
    x[1, 0, 1] = 1.0
    y = torch.tensor([0, 1, 2, 1, 0, 2])
    eps = 0.1
    m = method("fgsm_rs", eps=eps)
    assert (m.options.clean_weight, m.options.random_init, m.options.step()) == (0.0, True, pytest.approx(0.125))
    loss, _ = m.loss(model, x, y, state(9))
    # Written out (Wong et al. 2020, Alg. 3): δ ~ U[−ε, ε], x + δ clipped to [0, 1]; one step
    # of α = 1.25·ε along sign(∇ₓCE) = sign(Wᵀ(p − e_y)); δ clipped to [−ε, ε], x + δ to [0, 1].
    u = torch.rand(x.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    x0 = (x + (2 * u - 1) * eps).clamp(0, 1)
    p = torch.softmax(model(x0), 1)
    grad = ((p - F.one_hot(y, 3).double()) @ model.w).view_as(x)
    delta = (x0 - x + 1.25 * eps * grad.sign()).clamp(-eps, eps)
    x_adv = (x + delta).clamp(0, 1)
    assert torch.allclose(loss, F.cross_entropy(model(x_adv), y))
    # fgsm_at with random_init: true is the same method with Goodfellow's clean half.
    la, _ = method("fgsm_at", eps=eps, random_init=True).loss(model, x, y, state(9))
    assert torch.allclose(la, 0.5 * F.cross_entropy(model(x), y) + 0.5 * F.cross_entropy(model(x_adv), y))


@pytest.mark.parametrize("opts, path", [
    ({"name": "fgsm_at", "clean_weight": -0.5}, "train.method.clean_weight"),
    ({"name": "fgsm_at", "clean_weight": 2}, "train.method.clean_weight"),
    ({"name": "fgsm_rs", "alpha": 0}, "train.method.alpha"),
    ({"name": "fgsm_at", "random_init": "sometimes"}, "train.method.random_init"),
    ({"name": "sgr", "center": True, "covariance": "identity"}, "train.method.center"),
])
def test_new_method_options_reject_nonsense_naming_the_key(opts, path):
    from raystudy.spec.validate import validate_trial
    with pytest.raises(StudyError) as e:
        validate_trial({"model": {"arch": "stdcnn_mnist"}, "train": {"method": opts}})
    assert str(e.value).startswith(path + ":")


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
def test_training_and_evaluation_pgd_produce_the_same_iterates(dtype, tol):
    from raystudy.attacks import attack
    model = small_cnn().to(dtype).train()
    x, y = batch()
    x = x.to(dtype)
    # Each k-step run ends at the k-th iterate of one deterministic trajectory.
    for steps in (1, 2, 5):
        a = attack(model, "pgd", x, y, 0.1, steps=steps, alpha=0.03, random_start=False)
        b = pgd(model, x, y, 0.1, 0.03, steps, random_start=False)
        assert (a - b).abs().max() <= tol, steps
        assert (a - x).abs().max() > 0.02                   # it moved
    # The same random start: torchattacks draws U[−ε, ε] from torch's global RNG (seeded by
    # `attack`), training from its generator; seeded alike, the draws coincide.
    a = attack(model, "pgd", x, y, 0.1, steps=3, alpha=0.03, random_start=True, seed=7)
    b = pgd(model, x, y, 0.1, 0.03, 3, random_start=True, generator=torch.Generator().manual_seed(7))
    assert (a - b).abs().max() <= tol
    assert model.training


def test_pgd_at_trains_on_the_pgd_example_and_logs_eps():
    model = small_cnn()
    x, y = batch()
    m = method("pgd_at", eps="8/255", step_size=0.01, steps=3)
    loss, logs = m.loss(model, x, y, state(3))
    adv = pgd(model, x, y, 8 / 255, 0.01, 3, True, torch.Generator().manual_seed(3))
    assert torch.allclose(loss, F.cross_entropy(model(adv), y))
    assert m.epoch_log() == {"method.eps": pytest.approx(8 / 255)}
    assert "train_adv_acc" in logs


@pytest.mark.parametrize("name", ["pgd_at", "trades"])
def test_eps_warmup_ramps_linearly_then_holds(name):
    from raystudy.methods.trades import trades_attack
    m = method(name, eps=0.3, step_size=0.1, steps=2, eps_warmup_epochs=2)
    seen = []
    for e in range(4):
        st = state()
        st.stage_epoch = e
        m.on_epoch_start(None, st)
        seen.append(m.epoch_log()["method.eps"])
    assert seen == pytest.approx([0.1, 0.2, 0.3, 0.3])
    # The attack really uses the warmed ε: during epoch 0 the training loss equals the loss
    # on the ε = 0.1 attack, which stays inside the 0.1-ball.
    st = state(5)
    m.on_epoch_start(None, st)
    model, (x, y) = small_cnn(), batch()
    loss, _ = m.loss(model, x, y, st)
    g = torch.Generator().manual_seed(5)
    if name == "pgd_at":
        adv = pgd(model, x, y, 0.1, 0.1, 2, True, g)
        assert torch.allclose(loss, F.cross_entropy(model(adv), y))
    else:
        adv = trades_attack(model, x, 0.1, 0.1, 2, generator=g)
        from raystudy.methods.trades import trades_loss
        assert torch.allclose(loss, trades_loss(model, x, y, adv, 1.0)[0])
    # Off by default: the paper setting trains at the full ε from the first epoch.
    plain = method(name, eps=0.3)
    plain.on_epoch_start(None, state())
    assert plain.epoch_log()["method.eps"] == pytest.approx(0.3)


def test_eps_outside_unit_interval_is_a_clear_error():
    from raystudy.spec.validate import validate_trial
    with pytest.raises(StudyError) as e:
        validate_trial({"model": {"arch": "stdcnn_mnist"}, "train": {"method": {"name": "pgd_at", "eps": 8}}})
    assert "train.method.eps" in str(e.value) and "8/255" in str(e.value)


# --------------------------------------------------------------------------- TRADES

def test_trades_loss_equals_its_formula_on_a_hand_built_case():
    model = Linear(4, 3)
    x = torch.tensor([[0.1, 0.9, 0.4, 0.0], [0.7, 0.2, 0.5, 1.0]], dtype=torch.float64).view(2, 1, 2, 2)
    x_adv = (x + torch.tensor([0.05, -0.05, 0.05, 0.0], dtype=torch.float64).view(1, 1, 2, 2)).clamp(0, 1)
    y = torch.tensor([2, 0])
    beta = 6.0
    total, nat, rob, _ = trades_loss(model, x, y, x_adv, beta)

    def formula(w, b):
        # Written out: CE of the clean logits + β · (1/N) Σₙ Σₖ p_nat log(p_nat / p_adv).
        ln = x.flatten(1) @ w.T + b
        la = x_adv.flatten(1) @ w.T + b
        log_pn = ln - ln.exp().sum(1, keepdim=True).log()
        log_pa = la - la.exp().sum(1, keepdim=True).log()
        ce = -log_pn[torch.arange(2), y].mean()
        kl = (log_pn.exp() * (log_pn - log_pa)).sum() / 2
        return ce + beta * kl, ce, kl

    want, want_ce, want_kl = formula(model.w, model.b)
    assert torch.allclose(nat, want_ce) and torch.allclose(rob, want_kl) and torch.allclose(total, want)
    assert rob > 0
    # The natural branch is not detached: gradients agree with the formula's, which
    # differentiates through p_nat inside the KL too.
    g_impl = torch.autograd.grad(total, [model.w, model.b])
    g_want = torch.autograd.grad(want, [model.w, model.b])
    assert all(torch.allclose(a, b) for a, b in zip(g_impl, g_want))
    ln_det = (x.flatten(1) @ model.w.T + model.b).detach()
    detached = F.cross_entropy(model(x), y) + beta * F.kl_div(
        F.log_softmax(model(x_adv), 1), F.softmax(ln_det, 1), reduction="sum") / 2
    g_det = torch.autograd.grad(detached, [model.w])[0]
    assert not torch.allclose(g_det, g_impl[0])


def test_trades_attack_raises_the_kl_and_stays_in_the_ball():
    model = small_cnn()
    x, _ = batch()
    g = torch.Generator().manual_seed(0)
    start = trades_attack(model, x, 0.1, 0.02, 0, generator=g)      # 0 steps: x + 0.001·N(0, 1)
    assert 0 < (start - x).abs().max() < 0.01
    adv = trades_attack(model, x, 0.1, 0.02, 10, generator=torch.Generator().manual_seed(0))
    assert (adv - x).abs().max() <= 0.1 + 1e-12 and adv.min() >= 0 and adv.max() <= 1
    with torch.no_grad():
        def kl(a):
            return F.kl_div(F.log_softmax(model(a), 1), F.softmax(model(x), 1), reduction="sum")
        assert kl(adv) > 10 * kl(start)


# ------------------------------------------------------------------------- GN / SGR

def test_gn_equals_its_closed_form_on_softmax_regression():
    model = Linear(144, 4)
    x, y = batch()
    m = method("gn", strength=3.0)
    loss, logs = m.loss(model, x, y, state())
    p = torch.softmax(model(x), 1)
    grad = (p - F.one_hot(y, 4).double()) @ model.w
    data_var = x.var(dim=0, unbiased=False).mean()
    want_reg = 0.5 * 3.0 * data_var * (grad ** 2).sum(1).mean()
    assert torch.allclose(logs["reg"], want_reg)
    assert torch.allclose(loss, F.cross_entropy(model(x), y) + want_reg)


@pytest.mark.parametrize("scale", ["data", "none"])
@pytest.mark.parametrize("form", ["displacement", "dense"])
def test_sgr_with_identity_sigma_equals_gn_on_the_same_batch(scale, form):
    x, y = batch()
    gn_model, sgr_model = small_cnn(), small_cnn()
    gn = method("gn", strength=2.5, scale=scale)
    sgr = method("sgr", strength=2.5, scale=scale, covariance="identity", form=form)
    l_gn, logs_gn = gn.loss(gn_model, x, y, state())
    l_sgr, logs_sgr = sgr.loss(sgr_model, x, y, state())
    assert logs_gn["reg"] > 0
    assert torch.allclose(l_gn, l_sgr, rtol=1e-10) and torch.allclose(logs_gn["reg"], logs_sgr["reg"], rtol=1e-8)
    l_gn.backward()
    l_sgr.backward()
    for a, b in zip(gn_model.parameters(), sgr_model.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-7, atol=1e-12)


def _displacement_average(m: torch.Tensor, c: int, h: int, w: int, biased: bool) -> torch.Tensor:
    """Average (or H·W-normalized sum) of a dense C·H·W matrix over each pixel displacement."""
    k = torch.zeros(c, c, 2 * h - 1, 2 * w - 1, dtype=m.dtype)
    cnt = torch.zeros(2 * h - 1, 2 * w - 1, dtype=m.dtype)
    m = m.view(c, h, w, c, h, w)
    for pr in range(h):
        for pc in range(w):
            for qr in range(h):
                for qc in range(w):
                    k[:, :, qr - pr + h - 1, qc - pc + w - 1] += m[:, pr, pc, :, qr, qc]
                    cnt[qr - pr + h - 1, qc - pc + w - 1] += 1
    return k / (h * w) if biased else k / cnt


@pytest.mark.parametrize("c,h,w", [(1, 5, 4), (2, 4, 3)])
def test_displacement_covariance_averages_the_dense_second_moments(c, h, w):
    delta = torch.randn(9, c, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(c))
    flat = delta.flatten(1)
    dense = flat.T @ flat / len(flat)                               # raw second moments, d×d
    for est in ("biased", "unbiased"):
        want = _displacement_average(dense, c, h, w, est == "biased")
        assert torch.allclose(displacement_covariance(delta, est), want, atol=1e-12)


@pytest.mark.parametrize("c,h,w", [(1, 6, 5), (2, 4, 5)])
@pytest.mark.parametrize("radius", [None, 1, 2])
def test_displacement_convolution_equals_the_dense_matrix_form(c, h, w, radius):
    delta = torch.randn(7, c, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    k = crop_radius(displacement_covariance(delta, "unbiased"), radius)
    # The dense Σ of the covariance function: Σ_{(c,p),(c',q)} = K[c, c', q − p], zero past r.
    full = displacement_covariance(delta, "unbiased")
    rows, cols = torch.arange(h).repeat_interleave(w), torch.arange(w).repeat(h)
    dense = dense_from_displacement(full, h, w).view(c, h * w, c, h * w)
    if radius is not None:
        far = ((rows[:, None] - rows[None, :]).abs() > radius) | ((cols[:, None] - cols[None, :]).abs() > radius)
        dense = dense * ~far[None, :, None, :]
    dense = dense.reshape(c * h * w, c * h * w)
    assert torch.allclose(dense, dense.T)
    g = torch.randn(3, c, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    want = (g.flatten(1) @ dense.T).view_as(g)
    for how in ("conv", "fft"):
        assert torch.allclose(apply_displacement(k, g, how), want, atol=1e-12), how


def test_biased_covariance_function_is_positive_semidefinite():
    delta = torch.randn(3, 1, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    dense = dense_from_displacement(displacement_covariance(delta, "biased"), 6, 6)
    assert torch.linalg.eigvalsh(dense).min() > -1e-12


def test_sgr_sigma_is_a_running_average_of_normalized_perturbations_rescaled_to_the_data():
    model = small_cnn()
    x1, y1 = batch(seed=1)
    x2, y2 = batch(seed=2)
    m = method("sgr", source="gradient", decay=0.8)
    st = state()
    m._update_scale(x1)
    m.prepare(model, x1, y1, st)
    k1 = m.estimate(m.perturbations(model, x1, y1, st))
    # Normalized perturbations: Σ's trace is 1 before rescaling.
    assert torch.allclose(k1[0, 0, 11, 11] * 144, torch.tensor(1.0, dtype=k1.dtype))
    m._update_scale(x2)
    m.prepare(model, x2, y2, st)
    k2 = m.estimate(m.perturbations(model, x2, y2, st))
    assert torch.allclose(m.sigma, 0.8 * k1 + 0.2 * k2)
    dense = dense_from_displacement(m.scaled_sigma(), 12, 12)
    assert torch.allclose(dense.diagonal().mean(), m.data_var.to(dense.dtype))
    # The sign source: perturbations are ±1 per pixel before normalization.
    ms = method("sgr", source="sign")
    d = ms.perturbations(model, x1, y1, st)
    assert set(d.unique().tolist()) <= {-1.0, 0.0, 1.0}
    assert torch.allclose(normalized(d).flatten(1).norm(dim=1), torch.ones(len(d), dtype=d.dtype))


def test_sgr_state_round_trips_through_state_dict():
    model = small_cnn()
    x, y = batch()
    m = method("sgr", source="gradient")
    m.loss(model, x, y, state())
    m2 = method("sgr", source="gradient")
    m2.load_state_dict(copy.deepcopy(m.state_dict()))
    assert torch.equal(m2.sigma, m.sigma) and torch.equal(m2.data_var, m.data_var) and m2.steps == m.steps
    assert "method.sigma_corr1" in m.epoch_log()


def test_dense_sigma_on_large_inputs_is_refused():
    e = METHODS.get("sgr")
    with pytest.raises(StudyError) as err:
        e.obj(e.schema.model_validate({"form": "dense"}), DataInfo(3, 64, 64, 10, (0.5,) * 3, (0.25,) * 3))
    assert "displacement" in str(err.value)


# ----------------------------------------------------------------------------- CuSP

def test_cusp_options_pair_theta_and_eps():
    e = METHODS.get("cusp")
    o = e.schema.model_validate({"rotations": [120, 150, 180], "eps": ["2/255", "4/255", "8/255"]})
    assert o.eps == pytest.approx([2 / 255, 4 / 255, 8 / 255])
    with pytest.raises(ValueError, match="one \\(θ, ε\\) pair"):
        e.schema.model_validate({"rotations": [120, 150], "eps": [0.1]})
    with pytest.raises(ValueError):
        e.schema.model_validate({"rotations": [200], "eps": [0.1]})


@pytest.mark.parametrize("schedule, ok", [
    ({"name": "multistep", "milestones": [2, 3]}, True),
    ({"name": "multistep", "milestones": [1, 2, 3]}, True),   # the last pair stays after step 2
    ({"name": "multistep", "milestones": [2]}, False),        # the 180° pair would never be used
    ({"name": "multistep", "milestones": [4, 5]}, False),     # steps only after the stage ends
    ({"name": "multistep", "milestones": [2, 3], "gamma": 1}, False),  # the lr never changes
    ({"name": "cosine"}, False),                              # the lr changes every epoch
    ({"name": "constant"}, False),                            # never steps
])
def test_cusp_without_milestones_needs_a_stepped_schedule(schedule, ok):
    from raystudy.spec.validate import validate_trial
    cusp = {"name": "cusp", "rotations": [90, 135, 180], "eps": [0.05, 0.075, 0.1]}
    config = {"model": {"arch": "stdcnn_mnist"},
              "train": {"epochs": 4, "method": cusp, "schedule": schedule}}
    if ok:
        validate_trial(config)
    else:
        with pytest.raises(StudyError) as e:
            validate_trial(config)
        # The hint gives one milestone per curriculum step, spread over the stage.
        assert "train.method.milestones" in str(e.value) and "milestones: [1, 3]" in str(e.value)
    # Explicit milestones work whatever the schedule, if there are enough inside the stage;
    # a one-step curriculum needs none.
    validate_trial({**config, "train": {**config["train"], "method": {**cusp, "milestones": [1, 3]}}})
    with pytest.raises(StudyError, match="only 1 of its milestones"):
        validate_trial({**config, "train": {**config["train"], "method": {**cusp, "milestones": [2, 4]}}})
    validate_trial({**config, "train": {**config["train"],
                                        "method": {"name": "cusp", "rotations": [180], "eps": [0.1]}}})


def test_cusp_check_names_the_stage_in_a_staged_run():
    from raystudy.spec.validate import validate_trial
    with pytest.raises(StudyError) as e:
        validate_trial({"model": {"arch": "stdcnn_mnist"},
                        "train": {"schedule": {"name": "cosine"},
                                  "stages": [{"epochs": 2, "method": {"name": "natural"}},
                                             {"epochs": 6, "method": {"name": "cusp", "rotations": [90, 180],
                                                                      "eps": [0.05, 0.1]}}]}})
    assert "train.stages.1.method.milestones" in str(e.value)


def test_cusp_sets_the_epochs_augmentation_and_eps_from_the_milestone_index():
    m = method("cusp", rotations=[120, 150, 180], eps=["2/255", "4/255", "8/255"], steps=1)
    for k, (theta, eps) in enumerate([(120, 2 / 255), (150, 4 / 255), (180, 8 / 255), (180, 8 / 255)]):
        st = state()
        st.milestone_index = k
        st.augment = AugmentSpec(rotation=0, translation=2)
        m.on_epoch_start(None, st)
        assert st.augment.rotation == theta and st.augment.translation == 2
        assert m.epoch_log()["method.eps"] == pytest.approx(eps)
