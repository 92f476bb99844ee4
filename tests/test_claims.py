"""Claims (issue 16): the statistics against closed forms and reference values, and the verdicts
they give on recorded results folders with known effects. No Ray, no torch."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
from scipy import stats

from analysis import claim_stats as cs
from analysis.claims import evaluate_claims
from analysis.load import load
from claims_helpers import grid, paired_vectors, write_results


def verdicts(df) -> dict:
    return dict(zip(df["claim"], df["verdict"]))


def by_claim(df) -> dict:
    return {r["claim"]: r for r in df.to_dict("records")}


# --------------------------------------------------------------------------- statistics

def test_newcombe_paired_interval_matches_the_reference():
    # Cavo et al. (2012) in Fagerland, Lydersen & Laake, "Statistical Analysis of Contingency
    # Tables", ch. 8 (R package contingencytables): -0.0621 (95% CI -0.1186 to -0.0046).
    est, lo, hi = cs.newcombe_paired(59, 6, 16, 80)
    assert (round(est, 4), round(lo, 4), round(hi, 4)) == (-0.0621, -0.1186, -0.0046)
    # No discordant pair: the effect is 0 but the interval still reflects n (not [0, 0]).
    est, lo, hi = cs.newcombe_paired(10, 0, 0, 0)
    assert est == 0 and lo < -0.2 and hi > 0.2


def test_paired_t_is_students_interval():
    d = [0.1, 0.12, 0.08]
    mean, lo, hi = cs.paired_t(d)
    half = stats.t.ppf(0.975, 2) * 0.02 / math.sqrt(3)
    assert mean == pytest.approx(0.1) and lo == pytest.approx(0.1 - half) and hi == pytest.approx(0.1 + half)
    assert math.isnan(cs.paired_t([0.1])[1])


def test_trend_statistics_match_scipy():
    rng = np.random.default_rng(0)
    x = np.array([0.0, 45, 90, 180, 180])
    y = rng.normal(size=(4, 5))
    rho = cs.trend_stat(x, y, "spearman")
    tau = cs.trend_stat(x, y, "kendall")
    change = cs.trend_stat(x, y, "change")
    for i in range(4):
        assert rho[i] == pytest.approx(stats.spearmanr(x, y[i]).statistic)
        assert tau[i] == pytest.approx(stats.kendalltau(x, y[i]).statistic)
        assert change[i] == pytest.approx(stats.linregress(x, y[i]).slope * 180)
    assert cs.trend_stat(x, np.ones((1, 5)), "spearman")[0] == 0.0  # a constant metric has no order


@pytest.mark.parametrize("expect,lo,hi,margin,want", [
    ("greater", 0.01, 0.2, None, "supported"), ("greater", -0.2, -0.01, None, "contradicted"),
    ("greater", -0.01, 0.2, None, "inconclusive"), ("less", -0.2, -0.01, None, "supported"),
    ("increasing", 0.1, 0.9, None, "supported"), ("decreasing", 0.1, 0.9, None, "contradicted"),
    ("equal", -0.01, 0.015, 0.02, "supported"), ("equal", 0.03, 0.05, 0.02, "contradicted"),
    ("equal", 0.01, 0.05, 0.02, "inconclusive"), ("flat", -0.5, -0.1, 0.05, "contradicted"),
    ("greater", math.nan, math.nan, None, "inconclusive"),
])
def test_verdict_rules(expect, lo, hi, margin, want):
    assert cs.verdict(expect, lo, hi, margin) == want


def test_claims_statistics_import_neither_torch_nor_ray():
    import subprocess
    code = ("import sys, analysis.claims, analysis.claim_views; "
            "print('torch' in sys.modules, 'ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


# ----------------------------------------------------------------------- compare: seeds

ACC = {("nat", 0): 0.5, ("nat", 1): 0.6, ("nat", 2): 0.7, ("pgd", 0): 0.6, ("pgd", 1): 0.72, ("pgd", 2): 0.78}


def _seed_study(tmp_path, claims, **kw):
    rows = [(p, {"accuracy": ACC[(p["train.method.name"], p["seed"])]})
            for p in grid(**{"train.method.name": ["nat", "pgd"], "seed": [0, 1, 2]})]
    return write_results(tmp_path / "r", rows, claims=claims, axes=["train.method.name", "seed"], **kw)


def _cmp(name, expect, margin=None, **extra):
    body = {"metric": "accuracy", "a": {"train.method.name": "pgd"}, "b": {"train.method.name": "nat"},
            "expect": expect, **extra}
    if margin is not None:
        body["margin"] = margin
    return {"name": name, "compare": body}


def test_compare_pairs_seeds_with_a_paired_t_interval(tmp_path):
    claims = [_cmp("raises", "greater"), _cmp("lowers", "less"), _cmp("same_wide", "equal", 0.2),
              _cmp("same_narrow", "equal", 0.01), _cmp("same_edge", "equal", 0.12)]
    df = evaluate_claims(load(_seed_study(tmp_path, claims)))
    assert verdicts(df) == {"raises": "supported", "lowers": "contradicted", "same_wide": "supported",
                            "same_narrow": "contradicted", "same_edge": "inconclusive"}
    r = by_claim(df)["raises"]
    mean, lo, hi = cs.paired_t([0.1, 0.12, 0.08])
    assert (r["effect"], r["lo"], r["hi"]) == pytest.approx((mean, lo, hi))
    assert (r["n"], r["unit"], r["test"], r["unhealthy"]) == (3, "seed pairs", "paired t", 0)
    assert "matched on seed" in r["note"]


def test_unhealthy_and_failed_trials_are_reported(tmp_path):
    out = _seed_study(tmp_path, [_cmp("raises", "greater")])
    import pandas as pd
    t = pd.read_parquet(out / "trials.parquet")
    t["health.ok"] = t["trial_id"] != "t4"
    t["health.flags"] = np.where(t["trial_id"] == "t4", "did_not_learn", "")
    t.to_parquet(out / "trials.parquet")
    r = by_claim(evaluate_claims(load(out)))["raises"]
    assert r["unhealthy"] == 1 and "1 of 6 trials used flagged unhealthy (did_not_learn)" in r["note"]
    out2 = _seed_study(tmp_path / "x", [_cmp("raises", "greater")], status={"t5": "error"})
    r = by_claim(evaluate_claims(load(out2)))["raises"]
    assert r["n"] == 2 and "1 selected trial(s) failed or pending" in r["note"]


def test_pairs_ignore_derived_paths_and_axes_that_separate_the_groups(tmp_path):
    """sgd_hparams' shape: lr is an expr of batch size and lr rule (never a pairing key); a zip
    key (`variant`) that differs between the groups is what separates them, not a key."""
    rows = []
    for p in grid(**{"train.batch_size": [32, 256], "lr_rule": ["fixed", "ratio"], "seed": [0, 1]}):
        lr = 0.05 if p["lr_rule"] == "fixed" else 0.05 * p["train.batch_size"] / 128
        acc = 0.9 - (0.1 if p["train.batch_size"] == 256 and p["lr_rule"] == "fixed" else 0.0) + 0.01 * p["seed"]
        rows.append(({**p, "train.optimizer.lr": lr, "variant": len(rows) // 2}, {"accuracy": acc}))
    claims = [
        {"name": "big_batch_fixed", "compare": {"metric": "accuracy", "a": {"train.batch_size": 256},
                                                "b": {"train.batch_size": 32}, "within": {"lr_rule": "fixed"},
                                                "expect": "less"}},
        {"name": "ratio_vs_fixed", "compare": {"metric": "accuracy", "a": {"lr_rule": "ratio"},
                                               "b": {"lr_rule": "fixed"}, "expect": "greater"}},
    ]
    out = write_results(tmp_path / "r", rows, claims=claims, axes=["train.batch_size", "lr_rule", "seed", "variant"])
    df = by_claim(evaluate_claims(load(out)))
    a = df["big_batch_fixed"]
    assert a["n"] == 2 and a["effect"] == pytest.approx(-0.1) and "matched on seed" in a["note"]
    b = df["ratio_vs_fixed"]
    assert b["n"] == 4 and b["effect"] == pytest.approx(0.05)
    assert "matched on train.batch_size, seed" in b["note"] and "variant" not in b["note"]


def test_a_value_the_run_does_not_have_is_inconclusive(tmp_path):
    claims = [{"name": "momentum", "compare": {"metric": "accuracy", "a": {"train.optimizer.momentum": 0.9},
                                               "b": {"train.optimizer.momentum": 0.0}, "expect": "greater"}},
              {"name": "unmeasured", "compare": {"metric": "hessian.top1", "a": {"train.method.name": "pgd"},
                                                 "b": {"train.method.name": "nat"}, "expect": "greater"}}]
    df = by_claim(evaluate_claims(load(_seed_study(tmp_path, claims))))
    assert df["momentum"]["verdict"] == "inconclusive"
    assert "train.optimizer.momentum = 0.9 is not in this run" in df["momentum"]["note"]
    assert "axis not varied" in df["momentum"]["note"]
    assert df["unmeasured"]["verdict"] == "inconclusive" and "not measured" in df["unmeasured"]["note"]


def test_versus_compares_two_metrics_of_the_same_trials(tmp_path):
    rows = [(p, {"fool": 0.6 + 0.01 * p["seed"], "fool_random": 0.1}) for p in grid(seed=[0, 1, 2])]
    claims = [{"name": "beats_random", "compare": {"metric": "fool", "versus": "fool_random", "expect": "greater"}}]
    r = by_claim(evaluate_claims(load(write_results(tmp_path / "r", rows, claims=claims, axes=["seed"]))))
    assert r["beats_random"]["verdict"] == "supported" and r["beats_random"]["n"] == 3
    assert r["beats_random"]["metric"] == "fool vs fool_random"
    assert r["beats_random"]["effect"] == pytest.approx(0.51)


# -------------------------------------------------------------------- compare: examples

def _two_models(tmp_path, a_vec, b_vec, recorded=None, claims=None):
    rows = [({"model.arch": "std"}, {"accuracy": recorded or a_vec.mean()}), ({"model.arch": "gcnn"},
                                                                               {"accuracy": b_vec.mean()})]
    outcomes = [{"trial_id": "t0", "metric": "accuracy", "x": 0.0, "examples": "h", "correct": a_vec},
                {"trial_id": "t1", "metric": "accuracy", "x": 0.0, "examples": "h", "correct": b_vec}]
    claims = claims or [{"name": "std_worse", "compare": {"metric": "accuracy", "a": {"model.arch": "std"},
                                                           "b": {"model.arch": "gcnn"}, "expect": "less"}}]
    return write_results(tmp_path / "r", rows, claims=claims, axes=["model.arch"], outcomes=outcomes)


def test_one_seed_pairs_examples_exact_mcnemar_and_newcombe(tmp_path):
    a, b = paired_vectors(59, 6, 16, 80)
    r = by_claim(evaluate_claims(load(_two_models(tmp_path, a, b))))["std_worse"]
    assert r["verdict"] == "supported"
    assert (round(r["effect"], 4), round(r["lo"], 4), round(r["hi"], 4)) == (-0.0621, -0.1186, -0.0046)
    assert r["p"] == pytest.approx(2 * stats.binom.cdf(6, 22, 0.5))
    assert (r["n"], r["unit"], r["test"]) == (161, "examples", "exact McNemar, Newcombe interval")
    assert "one seed" in r["note"]


def test_outcomes_that_do_not_reproduce_the_metric_are_not_used(tmp_path):
    a, b = paired_vectors(59, 6, 16, 80)
    r = by_claim(evaluate_claims(load(_two_models(tmp_path, a, b, recorded=0.5))))["std_worse"]
    assert r["verdict"] == "inconclusive" and "no per-example outcomes reproduce accuracy" in r["note"]
    assert "too few: 1 pair(s) on one seed" in r["note"]


def _profile(acc_by_x: dict[float, np.ndarray]) -> tuple[list, float]:
    xs = sorted(acc_by_x)
    ys = [acc_by_x[x].mean() for x in xs]
    auc = np.trapezoid(ys, xs) / (xs[-1] - xs[0]) if hasattr(np, "trapezoid") else np.trapz(ys, xs) / (xs[-1] - xs[0])
    return [{"metric": "robustness.pgd", "x": x, "x_title": "eps", "accuracy": acc_by_x[x].mean()} for x in xs], auc


def test_an_auc_is_recomputed_from_outcomes_and_bootstrapped_over_examples(tmp_path):
    n = 400
    prof = {"pgd": {0.0: 340, 0.1: 250, 0.2: 150, 0.3: 60}, "nat": {0.0: 360, 0.1: 120, 0.2: 20, 0.3: 0}}
    rows, curves, outcomes = [], {}, []
    for i, (name, counts) in enumerate(prof.items()):
        by_x = {x: np.arange(n) < k for x, k in counts.items()}
        # acc_at adds 8/255, which the AUC leaves out: the outcome grid must drop it to reproduce.
        extra = {8 / 255: np.arange(n) < counts[0.1] + 20}
        c, auc = _profile(by_x)
        curves[f"t{i}"] = c + _profile(extra | {0.0: by_x[0.0]})[0][1:]
        rows.append(({"train.method.name": name}, {"robustness.pgd.auc": auc}))
        outcomes += [{"trial_id": f"t{i}", "metric": "robustness.pgd", "x": x, "examples": "h", "correct": v}
                     for x, v in (by_x | extra).items()]
    claims = [{"name": "at_raises_auc", "compare": {"metric": "robustness.pgd.auc", "a": {"train.method.name": "pgd"},
                                                    "b": {"train.method.name": "nat"}, "expect": "greater"}},
              {"name": "at_raises_acc", "compare": {"metric": "robustness.pgd.acc@0.1",
                                                    "a": {"train.method.name": "pgd"},
                                                    "b": {"train.method.name": "nat"}, "expect": "greater"}}]
    out = write_results(tmp_path / "r", rows, claims=claims, axes=["train.method.name"], curves=curves,
                        outcomes=outcomes)
    df = by_claim(evaluate_claims(load(out)))
    r = df["at_raises_auc"]
    assert r["verdict"] == "supported" and r["test"] == "paired bootstrap over examples" and r["n"] == n
    assert r["effect"] == pytest.approx(rows[0][1]["robustness.pgd.auc"] - rows[1][1]["robustness.pgd.auc"])
    assert r["lo"] < r["effect"] < r["hi"]
    # A curve point through the derived `acc@` name: exact McNemar on that point's outcomes.
    assert df["at_raises_acc"]["effect"] == pytest.approx((250 - 120) / n)
    assert df["at_raises_acc"]["test"] == "exact McNemar, Newcombe interval"


def test_the_examples_bootstrap_covers_the_true_difference():
    """95% intervals of the paired bootstrap cover a known difference of accuracies about 95% of
    the time (checked over 100 simulated evaluations of two correlated classifiers)."""
    from analysis.claim_outcomes import TrialOutcomes, bootstrap_pairs
    rng = np.random.default_rng(1)
    hits = 0
    for _ in range(100):
        u = rng.random(300)
        a, b = u < 0.8, u < 0.7   # true difference 0.1, strongly paired
        flip = rng.random(300) < 0.1
        a = a ^ flip
        true = 0.8 * 0.9 + 0.2 * 0.1 - 0.7
        ta = TrialOutcomes("h", np.array([0.0]), a[None].astype(np.float32), False)
        tb = TrialOutcomes("h", np.array([0.0]), b[None].astype(np.float32), False)
        _, lo, hi, _ = bootstrap_pairs([([ta], [tb])], n_boot=400, seed=int(rng.integers(1 << 30)))
        hits += lo <= true <= hi
    assert 88 <= hits <= 100


# ------------------------------------------------------------------------------- trend

def _trend_study(tmp_path, claims, seeds=(0, 1, 2), outcomes=False):
    rows, out_rows = [], []
    for p in grid(level=[0.0, 0.5, 1.0], seed=list(seeds)):
        k = int(400 - 150 * p["level"] - 10 * p["seed"])
        vec = np.arange(400) < k
        rows.append(({**p, "train.augment.rotation": p["level"] * 180}, {"accuracy": vec.mean(), "flat": 0.5}))
        out_rows.append({"trial_id": f"t{len(rows) - 1}", "metric": "accuracy", "x": 0.0,
                         "examples": f"s{p['seed']}", "correct": vec})
    return write_results(tmp_path / "r", rows, claims=claims, axes=["level", "seed"],
                         outcomes=out_rows if outcomes else None)


TREND = [{"name": "drops", "trend": {"metric": "accuracy", "over": "train.augment.rotation", "expect": "decreasing"}},
         {"name": "rises", "trend": {"metric": "accuracy", "over": "train.augment.rotation", "expect": "increasing"}},
         {"name": "flat", "trend": {"metric": "flat", "over": "level", "expect": "flat", "margin": 0.01}},
         {"name": "kendall", "trend": {"metric": "accuracy", "over": "level", "expect": "decreasing",
                                       "stat": "kendall"}}]


def test_trend_over_a_derived_axis_groups_by_seed(tmp_path):
    """over: rotation = level * 180 (an expr): `level` fixes the axis, so it does not group;
    the three seeds are the groups, and the cluster bootstrap runs over them."""
    df = evaluate_claims(load(_trend_study(tmp_path, TREND)))
    assert verdicts(df) == {"drops": "supported", "rises": "contradicted", "flat": "supported",
                            "kendall": "supported"}
    r = by_claim(df)["drops"]
    assert (r["effect"], r["lo"], r["hi"]) == (-1.0, -1.0, -1.0)
    assert (r["n"], r["unit"], r["test"]) == (3, "groups", "spearman, bootstrap over groups")
    assert "3 group(s) of seed, 9 trials" in r["note"]
    assert by_claim(df)["flat"]["statistic"] == "least-squares change over the axis"


def test_trend_on_one_seed_needs_outcomes(tmp_path):
    df = by_claim(evaluate_claims(load(_trend_study(tmp_path / "a", TREND[:1], seeds=(0,)))))
    assert df["drops"]["verdict"] == "inconclusive" and "too few: 1 group(s) on one seed" in df["drops"]["note"]
    df = by_claim(evaluate_claims(load(_trend_study(tmp_path / "b", TREND[:1], seeds=(0,), outcomes=True))))
    r = df["drops"]
    assert r["verdict"] == "supported" and (r["unit"], r["n"]) == ("examples", 400)
    assert r["test"] == "spearman, bootstrap over examples"


def test_a_trend_whose_axis_is_pinned_is_inconclusive(tmp_path):
    rows = [(p, {"accuracy": 0.9}) for p in grid(seed=[0, 1])]
    claims = [{"name": "t", "trend": {"metric": "accuracy", "over": "train.augment.rotation", "expect": "decreasing"}}]
    out = write_results(tmp_path / "r", rows, claims=claims, axes=["seed"])
    import json
    plan = json.loads((out / "study.json").read_text())
    for t in plan["trials"]:
        t["config"]["train"]["augment"] = {"rotation": 90}
    (out / "study.json").write_text(json.dumps(plan))
    r = by_claim(evaluate_claims(load(out)))["t"]
    assert r["verdict"] == "inconclusive" and "axis not varied: train.augment.rotation = 90" in r["note"]
