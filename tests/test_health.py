"""Health checks: the judge's rules, the `health:` section, the pure pieces of the checks
(monotone rise, check ε, cumulative minimum, eigenvalue shortfall), the zero-gradient
measure, the training values, and the Hessian check against an exact Hessian.

The three end-to-end positive controls (a normal model, a masked one, one that never
learned) are in tests/test_health_controls.py.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from raystudy.data import DataInfo, DeviceData
from raystudy.errors import StudyError
from raystudy.health import CHECKS, HealthOptions, judge, summary_columns
from raystudy.metrics.base import EvalContext
from raystudy.metrics.health_checks import (add_cummin, check_eps, eigen_shortfall, monotone_rise,
                                            zero_grad_fraction)
from raystudy.metrics.hessian import HessianOptions, hessian
from raystudy.spec.load import load_document
from raystudy.stats import Z95, wilson
from raystudy.training_health import robust_overfit, training_checks

H = "health."


# ------------------------------------------------------------------------------ the judge

def test_every_check_has_a_rule_and_options():
    o = HealthOptions()
    for c in CHECKS:
        assert o.on(c.name)
        assert o.check(c.name).tol == c.tol


@pytest.mark.parametrize("value,fails", [(1.0, True), (0.95, True), (1.09, True), (0.85, False), (1.2, False)])
def test_did_not_learn_loss_ratio_within_ten_percent_of_ln_k(value, fails):
    assert judge({H + "did_not_learn_loss_ratio": value})[1] == (["did_not_learn"] if fails else [])


def test_did_not_learn_accuracy_below_one_and_a_half_chance():
    assert judge({H + "did_not_learn_acc_ratio": 1.49})[1] == ["did_not_learn"]
    assert judge({H + "did_not_learn_acc_ratio": 1.51})[1] == []
    # Either value alone flags it; the loss ratio is fine here, the accuracy is not.
    assert judge({H + "did_not_learn_loss_ratio": 0.3, H + "did_not_learn_acc_ratio": 1.0})[1] == ["did_not_learn"]


def test_noise_aware_checks_allow_tol_plus_z_standard_errors():
    key = H + "robustness.pgd.monotone_rise"
    # tol 0.01 + 3 · 0.02 = 0.07
    assert judge({key: 0.069, key + "_se": 0.02}) == (True, [])
    assert judge({key: 0.071, key + "_se": 0.02}) == (False, ["robustness.pgd.monotone_rise"])
    assert judge({key: 0.011}) == (False, ["robustness.pgd.monotone_rise"])     # no se: tol alone
    looser = HealthOptions.model_validate({"checks": {"monotone_rise": {"z": 4}}})
    assert judge({key: 0.071, key + "_se": 0.02}, looser) == (True, [])


def test_unbounded_accuracy_is_judged_against_chance():
    row = {H + "chance": 0.1, H + "robustness.pgd.unbounded_acc": 0.12, H + "robustness.pgd.unbounded_acc_se": 0.01}
    assert judge(row) == (True, [])            # 0.12 <= 0.1 + 3 · 0.01
    row[H + "robustness.pgd.unbounded_acc"] = 0.5
    assert judge(row) == (False, ["robustness.pgd.unbounded_acc"])


def test_flags_keep_the_profile_name_and_switched_off_or_missing_checks_are_absent():
    row = {H + "robustness.fgsm.zero_grad_fraction": 1.0, H + "robustness.pgd.zero_grad_fraction": 0.0,
           H + "hessian.eigen_agreement": 0.3, H + "nonfinite_loss": 0.0, H + "robustness.pgd.check_eps": 0.2,
           "accuracy": 0.9}
    ok, flags = judge(row)
    assert not ok and flags == ["robustness.fgsm.zero_grad_fraction", "hessian.eigen_agreement"]
    off = HealthOptions.model_validate({"checks": {"zero_grad_fraction": {"enabled": False}}})
    assert judge(row, off)[1] == ["hessian.eigen_agreement"]
    assert judge(row, HealthOptions(enabled=False)) == (True, [])
    assert judge({"accuracy": 0.9}) == (True, [])
    assert summary_columns(row) == {"health.ok": False,
                                    "health.flags": "robustness.fgsm.zero_grad_fraction,hessian.eigen_agreement"}


def test_nan_values_count_as_not_measured():
    assert judge({H + "hessian.eigen_agreement": float("nan"), H + "nonfinite_loss": None}) == (True, [])


# ------------------------------------------------------------------- the study's section

STUDY = {"name": "h", "model": {"arch": "stdcnn_mnist"}, "evaluate": ["accuracy"]}


def test_health_section_validates_with_paths():
    doc = load_document({**STUDY, "health": {"n": 50, "checks": {"convergence_gain": {"tol": 0.05}}}})
    assert doc.spec.health.n == 50 and doc.spec.health.check("convergence_gain").tol == 0.05
    with pytest.raises(StudyError) as e:
        load_document({**STUDY, "health": {"checks": {"monotone_ris": {"tol": 1}}}}, file="s.yaml")
    assert "health.checks.monotone_ris" in str(e.value)
    with pytest.raises(StudyError) as e:
        load_document({**STUDY, "health": {"checks": {"eps0_gap": {"tol": -1}}}}, file="s.yaml")
    assert "health.checks.eps0_gap.tol" in str(e.value)


def test_health_section_leaves_trial_ids_alone():
    a = load_document(STUDY).trials[0].trial_id
    b = load_document({**STUDY, "health": {"enabled": False, "n": 7}}).trials[0].trial_id
    assert a == b


# ------------------------------------------------------------------------- pure pieces

def test_monotone_rise_is_the_largest_rise_above_the_running_minimum():
    rows = {0.0: (0.9, 1), 0.1: (0.5, 1), 0.2: (0.6, 1), 0.3: (0.4, 1), 0.4: (0.45, 1)}
    rise, se = monotone_rise(rows, 100)
    assert rise == pytest.approx(0.1)
    # Each proportion's noise is its 95% Wilson half-width over z (close to sqrt(p(1-p)/n)).
    half = [(hi - lo) / 2 / Z95 for lo, hi in (wilson(60, 100), wilson(50, 100))]
    assert se == pytest.approx(math.hypot(*half))
    assert se == pytest.approx(math.sqrt(0.6 * 0.4 / 100 + 0.5 * 0.5 / 100), rel=0.05)
    assert monotone_rise({0.0: (0.9, 1), 0.1: (0.5, 1), 0.2: (0.2, 1)}, 100) == (0.0, 0.0)


def test_check_eps_is_where_accuracy_first_halves_else_the_largest():
    rows = {0.0: (0.9, 1), 0.1: (0.7, 1), 0.2: (0.44, 1), 0.3: (0.1, 1)}
    assert check_eps(rows, [0, 0.1, 0.2, 0.3], 0.9) == 0.2
    flat = {0.0: (0.9, 1), 0.1: (0.9, 1), 0.3: (0.89, 1)}
    assert check_eps(flat, [0, 0.1, 0.3], 0.9) == 0.3


def test_cummin_column_per_metric():
    rows = [{"metric": "a", "x": 0.2, "accuracy": 0.5}, {"metric": "a", "x": 0.0, "accuracy": 0.9},
            {"metric": "a", "x": 0.1, "accuracy": 0.4}, {"metric": "b", "x": 0.0, "accuracy": 0.1}]
    add_cummin(rows)
    assert [r["accuracy_cummin"] for r in rows] == [0.4, 0.9, 0.4, 0.1]


def test_eigen_shortfall_is_one_sided():
    # Power iteration skipped λ3 = 1.0 and reported 0.62: proved by the Ritz value 1.0.
    assert eigen_shortfall([3.0, 2.0, 0.62], [3.0, 2.0, -0.99, 1.0, 0.1]) == pytest.approx(0.38)
    # Ritz values below (an unconverged Lanczos run) never flag.
    assert eigen_shortfall([3.0, 2.0, 1.0], [2.5, 1.5, 0.2]) < 0


# --------------------------------------------------------------------- zero gradients

class Linear(nn.Module):
    def __init__(self, transform=None):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(16, 3)
        self.transform = transform

    def forward(self, x):
        if self.transform is not None:
            x = self.transform(x)
        return self.fc(x.flatten(1))


def test_zero_grad_fraction_sees_a_binarized_input_and_not_a_plain_one():
    from raystudy.models.base import Binarize, InputTransform
    x = torch.rand(20, 1, 4, 4)
    y = torch.randint(0, 3, (20,))
    assert zero_grad_fraction(Linear().eval(), x, y) == 0.0
    assert zero_grad_fraction(Linear(InputTransform(Binarize(name="binarize"))).eval(), x, y) == 1.0


# -------------------------------------------------------------------- training values

def test_robust_overfit_drop_and_epochs():
    hist = [{"epoch": 1, "val.robustness.pgd.auc": 0.3}, {"epoch": 2, "val.robustness.pgd.auc": 0.5},
            {"epoch": 3, "val.robustness.pgd.auc": 0.42}, {"epoch": 4, "val.robustness.pgd.auc": 0.41},
            {"epoch": 4, "accuracy": 0.9}]
    out = robust_overfit(hist)
    assert out["health.robust_overfit_drop"] == pytest.approx(0.09)
    assert out["health.robust_overfit_epochs"] == 2.0
    assert robust_overfit([{"epoch": 1, "loss": 1.0}]) == {}


class Uniform(nn.Module):
    """Predicts the uniform distribution: loss ln K, accuracy of the first class's share."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return torch.zeros(len(x), 4) + self.w


def _data(n=40, k=4) -> DeviceData:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, 2, 2, generator=g)
    y = torch.arange(n) % k
    return DeviceData("t", x, y, x[:0], y[:0], x, y, DataInfo(1, 2, 2, k, (0.0,), (1.0,)))


def test_training_values_of_a_model_at_chance():
    out = training_checks([{"epoch": 1, "loss": math.log(4)}, {"epoch": 2, "loss": float("nan")}],
                          Uniform(), _data(), HealthOptions())
    assert out["health.chance"] == 0.25
    assert out["health.did_not_learn_acc_ratio"] == pytest.approx(1.0)   # argmax = class 0: 1/4
    assert out["health.nonfinite_loss"] == 1.0
    assert "health.did_not_learn_loss_ratio" not in out                  # the last loss was NaN
    ok, flags = judge(out)
    assert flags == ["did_not_learn", "nonfinite_loss"]
    out = training_checks([{"epoch": 1, "loss": math.log(4) * 1.02}], Uniform(), _data(), HealthOptions())
    assert out["health.did_not_learn_loss_ratio"] == pytest.approx(1.02)
    assert training_checks([], Uniform(), _data(), HealthOptions(enabled=False)) == {}


# --------------------------------------------------------------------- the Hessian check

class Quadratic(nn.Module):
    """A model whose cross-entropy is exactly L + θᵀAθ/2 in float32 (the other logit, L = 30,
    saturates the softmax), so its Hessian w.r.t. θ is A, with the eigenvalues we choose."""

    def __init__(self, eigenvalues: list[float]):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        d = len(eigenvalues)
        q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
        a = q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T
        self.register_buffer("A", a.float())
        self.theta = nn.Parameter(0.1 * torch.randn(d, generator=g))

    def forward(self, x):
        q = 0.5 * self.theta @ self.A @ self.theta
        z = torch.stack([-q, torch.tensor(30.0)])
        return z.expand(len(x), 2) + 0 * x.reshape(len(x), -1)[:, :1]


def _hessian_of(eigenvalues, seed: int) -> dict:
    m = Quadratic(eigenvalues)
    x = torch.zeros(8, 1, 1, 1)
    y = torch.zeros(8, dtype=torch.long)
    data = DeviceData("q", x, y, x[:0], y[:0], x, y, DataInfo(1, 1, 1, 2, (0.0,), (1.0,)))
    exact = torch.autograd.functional.hessian(
        lambda t: nn.functional.cross_entropy(torch.func.functional_call(m, {"theta": t}, (x,)), y),
        m.theta.detach().clone())
    assert torch.linalg.eigvalsh(exact.double()).tolist() == pytest.approx(sorted(eigenvalues), abs=1e-4)
    ctx = EvalContext(model=m, data=data, device=torch.device("cpu"), extra={"health": HealthOptions()})
    return hessian(ctx, HessianOptions(top_n=3, trace=False, seed=seed)).scalars


def test_hessian_check_flags_a_skipped_eigenvalue_and_passes_a_separated_spectrum():
    # λ3 = 1 and λ4 = -0.99 are close in magnitude: pyhessian's power iteration (default
    # tol 1e-3) stops on a mixture of the two and reports 0.62 as the third eigenvalue.
    close = _hessian_of([3.0, 2.0, 1.0, -0.99, 0.1, 0.05], seed=1)
    assert close["hessian.top3"] < 0.8
    assert close["health.hessian.eigen_agreement"] > 0.2
    assert judge(close)[1] == ["hessian.eigen_agreement"]
    apart = _hessian_of([3.0, 2.0, 1.0, 0.3, 0.1, 0.05], seed=1)
    assert apart["hessian.top3"] == pytest.approx(1.0, rel=5e-3)
    assert abs(apart["health.hessian.eigen_agreement"]) < 0.01
    assert judge(apart) == (True, [])


def test_hessian_without_health_options_measures_nothing_extra():
    m = Quadratic([2.0, 1.0])
    x = torch.zeros(4, 1, 1, 1)
    y = torch.zeros(4, dtype=torch.long)
    data = DeviceData("q", x, y, x[:0], y[:0], x, y, DataInfo(1, 1, 1, 2, (0.0,), (1.0,)))
    res = hessian(EvalContext(model=m, data=data, device=torch.device("cpu")), HessianOptions(trace=False))
    assert not any(k.startswith(H) for k in res.scalars)


def test_status_rejudges_recorded_values_under_the_studys_health_section():
    """raystudy.healthview.rejudge (status, report) with the real judge: the tolerance recorded
    in study.json decides, the values stay as measured."""
    from raystudy.healthview import rejudge
    row = {"trial_id": "a", "status": "completed", "health.robustness.pgd.gradient_free_gap": 0.12,
           "health.robustness.pgd.gradient_free_gap_se": 0.0, "health.ok": True, "health.flags": ""}
    strict, = rejudge([row], {"health": {}})
    assert (strict["health.ok"], strict["health.flags"]) == (False, "robustness.pgd.gradient_free_gap")
    loose, = rejudge([row], {"health": {"checks": {"gradient_free_gap": {"tol": 0.2}}}})
    assert (loose["health.ok"], loose["health.flags"]) == (True, "")
    off, = rejudge([row], {"health": {"enabled": False}})
    assert off["health.ok"] is True
