"""The statistics behind a claim's verdict (numpy/scipy only; analysis/claims.py decides which
one a claim gets). Every interval is two-sided 95%.

* paired_t: mean of paired differences ± t_{0.975, n−1} · sd / √n (Student), n ≥ 2 pairs.
* newcombe_paired: Newcombe's square-and-add interval for the difference of two paired
  proportions (Newcombe 1998, Stat. Med. 17:2635-2650, method 10), built from the two Wilson
  intervals and the (continuity-corrected) correlation of the pairs; it handles empty cells
  (no discordant pair).
* trend statistics per group: Spearman's ρ, Kendall's τ-b, or the least-squares slope times
  the axis' range ("change", in the metric's units); vectorised over bootstrap replicates.
* bootstrap_mean: percentile interval of the mean of per-group statistics when whole groups
  are resampled with replacement (a cluster bootstrap).
* verdict: supported / contradicted / inconclusive from an interval and the expectation.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from raystudy.stats import wilson

LEVEL = 0.95
N_BOOT = 2000
SUPPORTED, CONTRADICTED, INCONCLUSIVE = "supported", "contradicted", "inconclusive"


def paired_t(d) -> tuple[float, float, float]:
    """(mean, lo, hi) of paired differences d (Student t); lo = hi = nan below two pairs."""
    d = np.asarray(d, dtype=float)
    if len(d) == 0:
        return math.nan, math.nan, math.nan
    mean = float(d.mean())
    if len(d) < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf((1 + LEVEL) / 2, len(d) - 1)) * float(d.std(ddof=1)) / math.sqrt(len(d))
    return mean, mean - half, mean + half


def newcombe_paired(n11: int, n10: int, n01: int, n00: int) -> tuple[float, float, float]:
    """(p1 − p2, lo, hi) for paired binary outcomes: n10 = #(first right, second wrong), n01 the
    reverse, n11 / n00 both right / both wrong (Newcombe 1998, method 10)."""
    n = n11 + n10 + n01 + n00
    if n == 0:
        return math.nan, math.nan, math.nan
    p1, p2 = (n11 + n10) / n, (n11 + n01) / n
    l1, u1 = wilson(n11 + n10, n)
    l2, u2 = wilson(n11 + n01, n)
    denom = (n11 + n10) * (n01 + n00) * (n11 + n01) * (n10 + n00)
    # The correlation of the pairs, with Newcombe's continuity correction (0 for 0 <= A <= n/2).
    a = n11 * n00 - n10 * n01
    a = a - n / 2 if a > n / 2 else (a if a < 0 else 0.0)
    phi = a / math.sqrt(denom) if denom > 0 else 0.0
    delta = math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    eps = math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    theta = p1 - p2
    return theta, max(-1.0, theta - delta), min(1.0, theta + eps)


def percentile(draws) -> tuple[float, float]:
    """The central 95% of bootstrap draws (NaN draws left out)."""
    draws = np.asarray(draws, dtype=float)
    draws = draws[np.isfinite(draws)]
    if len(draws) == 0:
        return math.nan, math.nan
    lo, hi = np.quantile(draws, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return float(lo), float(hi)


def bootstrap_mean(values, n_boot: int = N_BOOT, seed: int = 0) -> tuple[float, float, float]:
    """(mean, lo, hi): per-group statistics resampled with replacement, whole groups at a time."""
    v = np.asarray(values, dtype=float)
    if len(v) == 0:
        return math.nan, math.nan, math.nan
    rng = np.random.default_rng(seed)
    draws = v[rng.integers(0, len(v), size=(n_boot, len(v)))].mean(axis=1)
    return (float(v.mean()), *percentile(draws))


# ---------------------------------------------------------------------- trend statistics

def _rank_rows(v: np.ndarray) -> np.ndarray:
    return stats.rankdata(v, axis=1)


def _pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Correlation of x (k,) with each row of y (R, k); 0 where a row is constant (no order)."""
    xc = x - x.mean()
    yc = y - y.mean(axis=1, keepdims=True)
    den = np.sqrt((xc ** 2).sum() * (yc ** 2).sum(axis=1))
    num = yc @ xc
    out = np.zeros(len(y))
    ok = den > 1e-15
    out[ok] = num[ok] / den[ok]
    return out


def trend_stat(over, values, kind: str) -> np.ndarray:
    """The group's statistic for each row of `values` (R, k) against the axis values `over` (k,):
    spearman (ρ), kendall (τ-b) or change (least-squares slope × (max − min of over))."""
    x = np.asarray(over, dtype=float)
    y = np.atleast_2d(np.asarray(values, dtype=float))
    if kind == "spearman":
        return _pearson_rows(stats.rankdata(x), _rank_rows(y))
    if kind == "kendall":
        out = np.array([stats.kendalltau(x, row).statistic for row in y], dtype=float)
        return np.nan_to_num(out, nan=0.0)
    if kind == "change":
        xc = x - x.mean()
        slope = (y - y.mean(axis=1, keepdims=True)) @ xc / float((xc ** 2).sum())
        return slope * float(x.max() - x.min())
    raise ValueError(f"unknown trend statistic {kind!r}")


STAT_NAMES = {"spearman": "Spearman's rho", "kendall": "Kendall's tau-b",
              "change": "least-squares change over the axis"}


# ---------------------------------------------------------------------------- verdicts

def verdict(expect: str, lo: float, hi: float, margin: float | None = None) -> str:
    """greater / increasing: supported when the interval lies above 0, contradicted below;
    less / decreasing the reverse; equal / flat: supported inside ±margin, contradicted when it
    lies wholly outside; anything else (an interval across 0, no interval) is inconclusive."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return INCONCLUSIVE
    if expect in ("greater", "increasing"):
        return SUPPORTED if lo > 0 else CONTRADICTED if hi < 0 else INCONCLUSIVE
    if expect in ("less", "decreasing"):
        return SUPPORTED if hi < 0 else CONTRADICTED if lo > 0 else INCONCLUSIVE
    m = float(margin or 0.0)
    if -m <= lo and hi <= m:
        return SUPPORTED
    return CONTRADICTED if lo > m or hi < -m else INCONCLUSIVE
