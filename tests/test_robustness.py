"""Robustness profiles: real torchattacks on a small trained StdCNN."""

from __future__ import annotations

import pytest
import torch

from raystudy.attacks import attack, perturbation_norm
from raystudy.errors import StudyError
from raystudy.metrics import EvalContext, predict
from raystudy.metrics.robustness import eps_label, normalized_auc
from raystudy.spec.validate import validate_trial


from helpers import run_metric, train_stdcnn  # noqa: E402


@pytest.fixture(scope="module")
def trained(mnist_small):
    return train_stdcnn(mnist_small)


def run(model, data, /, **opts):
    return run_metric("robustness", model, data, **opts)


def curve(res):
    return {r["x"]: r for r in res.curves}


def test_trained_model_is_accurate(trained, mnist_small):
    # The other tests read "a natural MNIST model"; make sure it is one.
    acc = (predict(trained, mnist_small.x_test) == mnist_small.y_test).float().mean().item()
    assert acc > 0.7


@pytest.mark.parametrize("name,norm,eps", [("fgsm", "Linf", 0.05), ("pgd", "Linf", 0.05), ("pgd_l2", "L2", 0.5)])
def test_budget_attacks_respect_their_budget(trained, mnist_small, name, norm, eps):
    x, y = mnist_small.x_test[:20], mnist_small.y_test[:20]
    hp = {} if name == "fgsm" else {"steps": 3}
    adv = attack(trained, name, x, y, eps, **hp)
    size = perturbation_norm(adv - x, norm)
    assert adv.min() >= 0 and adv.max() <= 1
    assert size.max() <= eps * (1 + 1e-4)
    assert size.max() > eps / 2
    assert torch.equal(attack(trained, name, x, y, 0.0, **hp), x)


@pytest.mark.parametrize("name,eps", [("fgsm", [0, 0.1]), ("pgd", [0, 0.1]), ("deepfool_batched", [0, 1.0])])
def test_eps_zero_gives_clean_accuracy_and_full_consistency(trained, mnist_small, name, eps):
    n = 60
    res = run(trained, mnist_small, attack=name, eps=eps, n=n, acc_at=[], **({"steps": 3} if name == "pgd" else {}))
    x, y = EvalContext(trained, mnist_small, torch.device("cpu")).subset("test", n, 0)
    clean = (predict(trained, x) == y).float().mean().item()
    row = curve(res)[0.0]
    assert row["accuracy"] == pytest.approx(clean, abs=1e-9)
    assert row["consistency"] == 1.0
    assert curve(res)[max(eps)]["accuracy"] < clean  # the attack does something


def test_pgd_accuracy_non_increasing_in_eps(trained, mnist_small):
    eps = [0, 0.05, 0.1, 0.15, 0.2, 0.3]
    res = run(trained, mnist_small, attack="pgd", eps=eps, n=100, steps=5, acc_at=[])
    acc = [curve(res)[float(e)]["accuracy"] for e in eps]
    assert all(b <= a for a, b in zip(acc, acc[1:])), acc
    assert acc[0] - acc[-1] > 0.5
    assert res.scalars["robustness.pgd.auc"] == pytest.approx(normalized_auc(eps, acc))


def test_pgd_large_eps_breaks_natural_model(trained, mnist_small):
    res = run(trained, mnist_small, attack="pgd", eps=[0.5], n=100, steps=5, acc_at=[])
    assert curve(res)[0.5]["accuracy"] <= 0.02
    assert res.scalars["robustness.pgd.auc"] == curve(res)[0.5]["accuracy"]


def test_pgd_is_at_least_as_strong_as_fgsm(trained, mnist_small):
    f = curve(run(trained, mnist_small, attack="fgsm", eps=[0.15], n=100, acc_at=[]))[0.15]
    p = curve(run(trained, mnist_small, attack="pgd", eps=[0.15], n=100, steps=5, acc_at=[]))[0.15]
    assert p["accuracy"] <= f["accuracy"] + 0.02


def test_restarts_only_ever_add_fooled_inputs(trained, mnist_small):
    # Same seed: the first restart repeats the single run; later ones replace only
    # inputs that are still classified correctly.
    one = curve(run(trained, mnist_small, attack="pgd", eps=[0.1], n=60, steps=3, acc_at=[]))[0.1]
    three = curve(run(trained, mnist_small, attack="pgd", eps=[0.1], n=60, steps=3, restarts=3, acc_at=[]))[0.1]
    assert three["accuracy"] <= one["accuracy"]


def test_autoattack_wrapper_runs_real_autoattack(trained, mnist_small):
    res = run(trained, mnist_small, attack="autoattack", eps=[0, 0.3], n=16, acc_at=[])
    assert curve(res)[0.0]["consistency"] == 1.0
    assert curve(res)[0.3]["accuracy"] == 0.0


def test_named_scalars_and_two_attacks_in_one_study(trained, mnist_small):
    a = run(trained, mnist_small, attack="fgsm", eps=[0, "4/255"], n=50)
    b = run(trained, mnist_small, attack="pgd", eps=[0, 0.1], n=50, steps=2, name="pgd2", acc_at=[0.1])
    assert set(a.scalars) == {"robustness.fgsm.auc", "robustness.fgsm.consistency_auc", "robustness.fgsm.acc@8/255"}
    # acc_at's ε (default 8/255) joins the curve and its scalar reads that row.
    assert a.scalars["robustness.fgsm.acc@8/255"] == curve(a)[8 / 255]["accuracy"]
    assert sorted(curve(a)) == [0.0, 4 / 255, 8 / 255]
    assert b.scalars["robustness.pgd2.acc@0.1"] == curve(b)[0.1]["accuracy"]
    assert {r["metric"] for r in a.curves} == {"robustness.fgsm"}
    assert {r["metric"] for r in b.curves} == {"robustness.pgd2"}
    # The AUC covers the declared ε only.
    acc = [curve(a)[e]["accuracy"] for e in (0.0, 4 / 255)]
    assert a.scalars["robustness.fgsm.auc"] == pytest.approx(sum(acc) / 2)


def test_mode_restored_rng_untouched_and_reproducible(trained, mnist_small):
    trained.train()
    trained.zero_grad(set_to_none=True)
    try:
        torch.manual_seed(123)
        expect = torch.rand(3)
        torch.manual_seed(123)
        r1 = run(trained, mnist_small, attack="pgd", eps=[0.1], n=40, steps=2, acc_at=[])
        assert torch.equal(torch.rand(3), expect)  # the random start used a forked RNG
        assert trained.training
        assert all(p.grad is None and p.requires_grad for p in trained.parameters())
        r2 = run(trained, mnist_small, attack="pgd", eps=[0.1], n=40, steps=2, acc_at=[])
        assert r1.curves == r2.curves
    finally:
        trained.eval()


def test_minimal_attack_curve_counts_perturbation_size(trained, mnist_small):
    res = run(trained, mnist_small, attack="deepfool_batched", eps=[0, 0.5, 1, 2, 100], n=40, acc_at=[])
    acc = [r["accuracy"] for r in sorted(res.curves, key=lambda r: r["x"])]
    assert all(b <= a for a, b in zip(acc, acc[1:]))
    # With an unbounded budget every correctly classified input is fooled by DeepFool.
    assert curve(res)[100.0]["accuracy"] == 0.0


def eval_item(item):
    return validate_trial({"model": {"arch": "stdcnn_mnist"}, "evaluate": ["accuracy", item]})


def test_options_are_validated_with_clear_errors():
    parsed = eval_item({"robustness": {"attack": "pgd", "eps": [0, "8/255"], "steps": 40, "alpha": 0.01}})
    assert parsed.metrics[1].options.eps == [0, 8 / 255]
    with pytest.raises(StudyError, match=r"evaluate\.1\.robustness.*unknown attack 'pgdd'.*did you mean 'pgd'"):
        eval_item({"robustness": {"attack": "pgdd"}})
    with pytest.raises(StudyError, match=r"c do not apply to attack 'pgd'"):
        eval_item({"robustness": {"attack": "pgd", "c": 1.0}})
    with pytest.raises(StudyError, match=r"outside \[0, 1\]"):
        eval_item({"robustness": {"attack": "pgd", "eps": [1.5]}})
    with pytest.raises(StudyError, match=r"unknown key 'stepz'"):
        eval_item({"robustness": {"attack": "pgd", "stepz": 3}})
    eval_item({"robustness": {"attack": "pgd_l2", "eps": [0, 1.5]}})  # an L2 radius may exceed 1


def test_eps_labels():
    assert eps_label(8 / 255) == "8/255"
    assert eps_label(0.3) == "0.3"
    assert eps_label(0.0) == "0"
