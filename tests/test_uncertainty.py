"""Sampling uncertainty: Wilson intervals, the compact outcome bits, the exact McNemar test and
its paired interval, and the paired bootstrap (analysis.paired), checked against closed forms
and by coverage on synthetic data with a known effect."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest

from analysis.paired import STATS, mcnemar_exact, paired_bootstrap, vectors
from raystudy.stats import add_intervals, decode, encode, normalized_auc, pack, unpack, wilson


# ---------------------------------------------------------------------------- Wilson

def test_wilson_known_values():
    lo, hi = wilson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    assert wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    # Closed form at k = n: lower bound n / (n + z²).
    assert wilson(10, 10) == pytest.approx((10 / (10 + 1.959964 ** 2), 1.0), abs=1e-6)
    assert all(math.isnan(v) for v in wilson(0, 0))


def test_wilson_is_symmetric_vectorised_and_shrinks_with_n():
    ks, ns = np.array([0, 3, 7, 50]), np.array([10, 10, 10, 100])
    lo, hi = wilson(ks, ns)
    lo2, hi2 = wilson(ns - ks, ns)
    assert np.allclose(lo, 1 - hi2) and np.allclose(hi, 1 - lo2)
    assert np.allclose([wilson(k, n) for k, n in zip(ks, ns)], np.stack([lo, hi], 1))
    widths = [np.subtract(*wilson(n // 2, n)[::-1]) for n in (10, 100, 1000)]
    assert widths[0] > widths[1] > widths[2]


def test_wilson_covers_the_true_proportion_about_95_percent():
    rng = np.random.default_rng(0)
    for p, n in ((0.5, 40), (0.9, 100), (0.02, 200)):
        k = rng.binomial(n, p, size=20000)
        lo, hi = wilson(k, n)
        cover = np.mean((lo <= p) & (p <= hi))
        assert 0.925 < cover < 0.985, (p, n, cover)


def test_add_intervals_sets_n_and_bounds_of_proportion_columns_only():
    row = add_intervals({"metric": "m", "x": 0.1, "accuracy": 0.5, "consistency": 1.0, "angle": 88.0,
                         "fooling_rate": None}, 10)
    assert row["n"] == 10
    assert (row["accuracy_lo"], row["accuracy_hi"]) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert row["consistency_hi"] == 1.0 and row["consistency_lo"] == pytest.approx(10 / (10 + 1.959964 ** 2))
    assert "angle_lo" not in row and "fooling_rate_lo" not in row
    # A metric that knows its own n (svd_universal scores n_eval images) keeps it.
    assert add_intervals({"accuracy": 0.5, "n": 20}, 99)["accuracy_hi"] == pytest.approx(wilson(10, 20)[1])


# ---------------------------------------------------------------------------- bits

@pytest.mark.parametrize("n", [1, 7, 8, 9, 1000, 1001])
def test_outcomes_round_trip_through_packed_bits_and_base64(n):
    bits = np.random.default_rng(n).random(n) < 0.3
    assert len(pack(bits)) == (n + 7) // 8
    assert (unpack(pack(bits), n) == bits).all()
    assert (unpack(decode(encode(bits)), n) == bits).all()
    with pytest.raises(ValueError, match="at most"):
        unpack(pack(bits), 8 * len(pack(bits)) + 1)


def test_normalized_auc_matches_the_metrics_definition():
    from raystudy.metrics.robustness import normalized_auc as metric_auc
    xs, ys = [0.0, 0.3, 0.1, 0.2], [1.0, 0.1, 0.8, 0.5]
    assert normalized_auc(xs, ys) == pytest.approx(metric_auc(xs, ys))
    assert normalized_auc([0.1], [0.7]) == 0.7
    assert normalized_auc(xs, np.array([ys, [1, 1, 1, 1]])) == pytest.approx([metric_auc(xs, ys), 1.0])


# ---------------------------------------------------------------------------- McNemar

def _pairs(n11, n10, n01, n00):
    a = np.array([1] * n11 + [1] * n10 + [0] * n01 + [0] * n00, dtype=bool)
    b = np.array([1] * n11 + [0] * n10 + [1] * n01 + [0] * n00, dtype=bool)
    return a, b


def test_mcnemar_exact_against_a_hand_computed_binomial_tail():
    # 9 images only A gets right, 1 only B: P(X <= 1), X ~ Bin(10, 1/2) = 11/1024, doubled.
    r = mcnemar_exact(*_pairs(30, 9, 1, 10))
    assert (r["n"], r["n10"], r["n01"]) == (50, 9, 1)
    assert r["p"] == pytest.approx(22 / 1024, rel=1e-12)
    assert r["effect"] == pytest.approx((9 - 1) / 50)
    # Symmetric in which model is better; no discordant pairs: no evidence at all.
    assert mcnemar_exact(*_pairs(30, 1, 9, 10))["p"] == r["p"]
    assert mcnemar_exact(*_pairs(30, 0, 0, 10))["p"] == 1.0
    assert mcnemar_exact(*_pairs(30, 4, 4, 10))["p"] == 1.0
    # 0 vs 6: 2 · (1/2)^6 = 1/32.
    assert mcnemar_exact(*_pairs(5, 0, 6, 5))["p"] == pytest.approx(1 / 32)


def test_mcnemar_matches_scipys_binomial_test_on_large_counts():
    from scipy.stats import binomtest
    r = mcnemar_exact(*_pairs(700, 160, 120, 20))
    assert r["p"] == pytest.approx(binomtest(120, 280, 0.5).pvalue, rel=1e-9)
    with pytest.raises(ValueError):
        mcnemar_exact(np.ones(3, bool), np.ones(4, bool))


def test_paired_interval_covers_the_true_difference_about_95_percent():
    # Correlated pairs, as two models on the same images: P(A right) = 0.80, P(B right) = 0.72.
    rng = np.random.default_rng(1)
    cover, n, true = 0, 150, 0.80 - 0.72
    for _ in range(1000):
        u = rng.random(n)
        a = u < 0.80
        b = np.where(rng.random(n) < 0.6, u < 0.72, rng.random(n) < 0.72)
        r = mcnemar_exact(a, b)
        assert r["lo"] <= r["effect"] <= r["hi"]
        cover += r["lo"] <= true <= r["hi"]
    assert 0.93 <= cover / 1000 <= 0.975


# ---------------------------------------------------------------------------- bootstrap

XS = [0.0, 0.05, 0.1, 0.2, 0.3]
PA = np.array([0.95, 0.90, 0.80, 0.60, 0.40])     # a robust model's profile
PB = np.array([0.95, 0.85, 0.70, 0.45, 0.25])


def _curves(rng, n, shared: float = 0.7):
    """Outcomes of two models on the same n images: one latent difficulty per image, so every
    curve decreases image by image and the two models agree more often than by chance."""
    u = rng.random(n)
    v = np.where(rng.random(n) < shared, u, rng.random(n))
    a = u[None, :] < PA[:, None]
    b = v[None, :] < PB[:, None]
    return a, b


def _rows(mat, examples="e1"):
    return [{"x": x, "n": mat.shape[1], "examples": examples, "correct": pack(m), "consistent": None}
            for x, m in zip(XS, mat)]


def test_paired_bootstrap_interval_covers_the_known_auc_difference():
    true = normalized_auc(XS, PA) - normalized_auc(XS, PB)
    rng = np.random.default_rng(2)
    a, b = _curves(rng, 400)
    r = paired_bootstrap(_rows(a), _rows(b), "auc", n_boot=2000, seed=0)
    assert r["effect"] == pytest.approx(normalized_auc(XS, a.mean(1)) - normalized_auc(XS, b.mean(1)))
    assert r["lo"] < true < r["hi"] and r["lo"] > 0 and r["p"] < 0.01
    cover = 0
    for _ in range(100):
        a, b = _curves(rng, 300)
        s = paired_bootstrap(_rows(a), _rows(b), n_boot=400, seed=int(rng.integers(1 << 30)))
        cover += s["lo"] <= true <= s["hi"]
    assert cover >= 88
    # No difference at all: the interval is the point 0 and the test says so.
    same = paired_bootstrap(_rows(a), _rows(a), n_boot=200)
    assert (same["effect"], same["lo"], same["hi"], same["p"]) == (0.0, 0.0, 0.0, 1.0)


def test_pairing_is_what_makes_the_bootstrap_sensitive():
    # The same data resampled independently per model would give a much wider interval.
    a, b = _curves(np.random.default_rng(3), 300, shared=0.95)
    paired = paired_bootstrap(_rows(a), _rows(b), "mean", n_boot=1000)
    rng = np.random.default_rng(0)
    ind = [STATS["mean"](XS, a[:, rng.integers(0, 300, 300)].mean(1)) -
           STATS["mean"](XS, b[:, rng.integers(0, 300, 300)].mean(1)) for _ in range(1000)]
    assert paired["hi"] - paired["lo"] < 0.6 * (np.quantile(ind, 0.975) - np.quantile(ind, 0.025))


def test_paired_tests_refuse_different_images():
    a, b = _curves(np.random.default_rng(4), 50)
    with pytest.raises(ValueError, match="same images"):
        paired_bootstrap(_rows(a), _rows(b, examples="other"), n_boot=10)
    with pytest.raises(ValueError, match="different points"):
        paired_bootstrap(_rows(a), _rows(b)[:-1], n_boot=10)
    xs, keys, mat = vectors(_rows(a)[::-1])
    assert list(xs) == XS and keys == ["e1"] * 5 and (mat == a).all()


def test_analysis_paired_imports_neither_torch_nor_ray():
    import subprocess
    code = ("import sys, analysis.paired, raystudy.stats; "
            "print(sorted(m for m in ('torch', 'ray') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
