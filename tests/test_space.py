"""Search space operators, the safe expression evaluator, trial identity."""

import math

import pytest

from raystudy.errors import StudyError
from raystudy.spec.expr import evaluate
from raystudy.spec.load import load_document

BASE = {
    "name": "t",
    "data": {"dataset": "synthetic"},
    "model": {"arch": "stdcnn_mnist"},
    "train": {"epochs": 1, "batch_size": 128, "optimizer": {"name": "sgd", "lr": 0.05}},
}


def study(space, **tune):
    doc = dict(BASE, space=space)
    if tune:
        doc["tune"] = tune
    return load_document(doc)


def test_grid_is_a_cartesian_product():
    s = study({"train.batch_size": {"grid": [32, 64, 128]}, "seed": {"grid": [0, 1]}})
    combos = {(t.config["train"]["batch_size"], t.config["seed"]) for t in s.trials}
    assert combos == {(b, sd) for b in (32, 64, 128) for sd in (0, 1)}


def test_expr_derives_values_from_entries_and_config_paths():
    s = study({
        "train.batch_size": {"grid": [32, 256]},
        "lr_rule": {"grid": ["fixed", "constant_ratio"]},
        "train.optimizer.lr": {"expr": "0.05 if lr_rule == 'fixed' else 0.05 * train.batch_size / 128"},
    })
    got = {(t.params["lr_rule"], t.config["train"]["batch_size"]): t.config["train"]["optimizer"]["lr"]
           for t in s.trials}
    assert got[("fixed", 32)] == 0.05 and got[("fixed", 256)] == 0.05
    assert got[("constant_ratio", 32)] == pytest.approx(0.0125)
    assert got[("constant_ratio", 256)] == pytest.approx(0.1)
    # Free variables land in params (for the tables) but not in the config.
    assert "lr_rule" not in s.trials[0].config


def test_expr_chains_in_dependency_order():
    s = study({"b": {"expr": "a * 2"}, "a": {"expr": "train.batch_size + 1"}})
    assert s.trials[0].params["b"] == 258


def test_zip_varies_paths_together():
    s = study({"curriculum": {"zip": {"train.batch_size": [16, 32, 64], "train.optimizer.lr": [0.1, 0.2, 0.3]}}})
    pairs = sorted((t.config["train"]["batch_size"], t.config["train"]["optimizer"]["lr"]) for t in s.trials)
    assert pairs == [(16, 0.1), (32, 0.2), (64, 0.3)]


def test_zip_lengths_must_match():
    with pytest.raises(StudyError) as ei:
        study({"c": {"zip": {"train.batch_size": [1, 2], "seed": [1]}}})
    assert "space.c.zip" in str(ei.value)


def test_sampled_operators_respect_ranges_and_are_reproducible():
    space = {
        "train.optimizer.lr": {"loguniform": [1e-4, 1e-1]},
        "train.optimizer.momentum": {"uniform": [0.0, 0.9]},
        "train.batch_size": {"randint": [16, 64]},
        "seed": {"choice": [0, 1, 2]},
    }
    s1 = study(space, num_samples=20, seed=5)
    s2 = study(space, num_samples=20, seed=5)
    assert [t.trial_id for t in s1.trials] == [t.trial_id for t in s2.trials]
    lrs = [t.config["train"]["optimizer"]["lr"] for t in s1.trials]
    assert all(1e-4 <= v <= 1e-1 for v in lrs)
    # log-uniform: about as many draws below 1e-2.5 as above
    assert 3 <= sum(v < 10 ** -2.5 for v in lrs) <= 17
    assert all(16 <= t.config["train"]["batch_size"] < 64 for t in s1.trials)
    assert all(0 <= t.config["train"]["optimizer"]["momentum"] <= 0.9 for t in s1.trials)
    assert {t.config["seed"] for t in s1.trials} <= {0, 1, 2}
    s3 = study(space, num_samples=20, seed=6)
    assert [t.trial_id for t in s3.trials] != [t.trial_id for t in s1.trials]


def test_num_samples_multiplies_grid():
    s = study({"seed": {"grid": [0, 1]}, "train.optimizer.lr": {"uniform": [0.01, 0.1]}}, num_samples=3)
    assert len(s.trials) == 6


def test_constants_apply_to_every_trial():
    s = study({"train.epochs": 7, "seed": {"grid": [0, 1]}})
    assert all(t.config["train"]["epochs"] == 7 for t in s.trials)


def test_empty_grid_is_an_error():
    with pytest.raises(StudyError) as ei:
        study({"seed": {"grid": []}})
    assert "space.seed.grid" in str(ei.value) and "empty" in str(ei.value)


def test_trial_id_depends_on_config_only():
    a = study({"seed": {"grid": [0, 1]}})
    b = study({"seed": {"grid": [1, 0, 2]}})
    assert {t.trial_id for t in a.trials} < {t.trial_id for t in b.trials}


def test_trials_are_validated_before_anything_runs():
    with pytest.raises(StudyError) as ei:
        study({"model.arch": {"grid": ["stdcnn_mnist", "stdcnn_mnst"]}})
    assert "did you mean 'stdcnn_mnist'" in str(ei.value)


@pytest.mark.parametrize("src", [
    "__import__('os').system('echo hi')",
    "open('/etc/passwd')",
    "(1).__class__",
    "a.__class__.__bases__",
    "[x for x in range(3)]",
    "lambda: 1",
    "eval('1')",
    "'a' * 10",
    "2 ** 100000",
    "{'a': 1}",
    "f'{a}'",
])
def test_expr_cannot_reach_python(src):
    with pytest.raises(StudyError):
        evaluate(src, {"a": 1})


def test_expr_allows_arithmetic_comparison_conditionals():
    env = {"train.batch_size": 64, "lr_rule": "fixed", "x": 3}
    assert evaluate("0.1 * train.batch_size / 128", env) == pytest.approx(0.05)
    assert evaluate("1 if lr_rule == 'fixed' and x > 2 else 0", env) == 1
    assert evaluate("max(1, x) ** 2 - sqrt(16) + log(exp(2))", env) == pytest.approx(7)
    assert evaluate("not x < 2", env) is True
    assert math.isclose(evaluate("-x // 2 + x % 2", env), -1)



def test_expr_nesting_is_bounded_by_an_error_not_the_python_stack():
    # 2,000 characters of unary minus used to end in a RecursionError traceback.
    assert evaluate("-" * 150 + "x", {"x": 3}) == 3
    for src in ("-" * 1999 + "1", "1+" * 999 + "1"):
        with pytest.raises(StudyError) as ei:
            evaluate(src, {})
        assert "nested too deeply" in str(ei.value) and "at most 200 levels" in str(ei.value)

def test_expr_unknown_name_suggests():
    with pytest.raises(StudyError) as ei:
        evaluate("train.batchsize * 2", {"train.batch_size": 1})
    assert "did you mean 'train.batch_size'" in str(ei.value)
