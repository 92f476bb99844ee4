"""Paired comparisons of two trials evaluated on the same images (no torch, no Ray).

Every metric that measures a proportion over a subset of images stores, per curve point,
which images were correct (and consistent with the model's clean prediction) in
`outcomes.parquet` (raystudy.results): columns trial_id, metric, x, n, examples, correct
(np.packbits bytes), consistent (bytes or null). Two trials whose rows carry the same
`examples` key saw exactly the same images in the same order, so their difference can be
tested image by image, which is far more sensitive than comparing two independent means:
most images are right (or wrong) under both models and carry no information about the
difference; only the discordant ones do.

* `mcnemar_exact(a, b)`: one curve point. The exact McNemar test (McNemar 1947): under
  H0 (equal accuracy) each of the n01 + n10 discordant images is equally likely to favour
  either model, so min(n01, n10) is a Binomial(n01 + n10, 1/2) tail, doubled (two-sided).
  The interval of the difference is Newcombe's (1998, method 10) score interval for paired
  proportions, built from the two Wilson intervals and the phi correlation of the pairs.
* `paired_bootstrap(a_rows, b_rows, stat)`: a statistic of a whole curve (the AUC of a
  robustness profile, its mean, its minimum): images are resampled with replacement, the
  same resample for both trials (Efron & Tibshirani 1993, the paired bootstrap), and the
  percentile interval of stat(A) - stat(B) is reported.
* `compare(outcomes, a, b, metric, x=None)`: picks the rows and runs the right one.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from raystudy.layout import OUTCOMES, Layout
from raystudy.results import OUTCOME_COLUMNS
from raystudy.stats import Z95, normalized_auc, unpack, wilson

__all__ = ["load_outcomes", "unpack", "vectors", "mcnemar_exact", "paired_bootstrap", "compare", "STATS"]

# Statistics of a curve for paired_bootstrap: f(xs, p) reduces the last axis of p (proportions per x).
STATS: dict[str, Callable] = {
    "auc": normalized_auc,
    "mean": lambda xs, p: np.mean(p, axis=-1),
    "min": lambda xs, p: np.min(p, axis=-1),
}


def load_outcomes(results_dir: str | Path) -> pd.DataFrame:
    """outcomes.parquet of a results folder (an empty frame with its columns when there is none)."""
    return Layout(results_dir).read_table(OUTCOMES, OUTCOME_COLUMNS)


def _rows(rows) -> pd.DataFrame:
    df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    if df.empty:
        raise ValueError("no outcome rows to compare")
    return df.sort_values("x", kind="stable")


def vectors(rows, column: str = "correct") -> tuple[np.ndarray, list[str], np.ndarray]:
    """(xs, examples keys, bool matrix [points, n]) of one trial's rows of one metric."""
    df = _rows(rows)
    if df["x"].duplicated().any():
        raise ValueError("several rows at one x: select one trial and one metric")
    if df[column].isna().any():
        raise ValueError(f"some rows have no '{column}' outcomes")
    n = df["n"].astype(int).tolist()
    if len(set(n)) != 1:
        raise ValueError(f"the points were measured on different numbers of images: {sorted(set(n))}")
    mat = np.stack([unpack(bits, n[0]) for bits in df[column]])
    return df["x"].to_numpy(dtype=float), df["examples"].tolist(), mat


def _newcombe(n11, n10, n01, n00, z: float = Z95) -> tuple[float, float]:
    """Newcombe's (1998) method-10 interval for p_a - p_b from paired 2x2 counts."""
    n = n11 + n10 + n01 + n00
    pa, pb = (n11 + n10) / n, (n11 + n01) / n
    la, ua = wilson(n11 + n10, n, z)
    lb, ub = wilson(n11 + n01, n, z)
    denom = (n11 + n10) * (n01 + n00) * (n11 + n01) * (n10 + n00)
    phi = (n11 * n00 - n10 * n01) / np.sqrt(float(denom)) if denom > 0 else 0.0
    d = pa - pb
    lo = d - np.sqrt(max(0.0, (pa - la) ** 2 - 2 * phi * (pa - la) * (ub - pb) + (ub - pb) ** 2))
    hi = d + np.sqrt(max(0.0, (ua - pa) ** 2 - 2 * phi * (ua - pa) * (pb - lb) + (pb - lb) ** 2))
    return float(max(-1.0, lo)), float(min(1.0, hi))


def _binomial_tail_half(k: int, m: int) -> float:
    """P(X <= k) for X ~ Binomial(m, 1/2), in exact integer arithmetic."""
    term, total = 1, 1
    for i in range(k):
        term = term * (m - i) // (i + 1)
        total += term
    return float(Fraction(total, 2 ** m))


def mcnemar_exact(a, b) -> dict:
    """Exact two-sided McNemar test of two boolean vectors over the same images (a[i]: image i
    right under trial A). Returns n, n01 (wrong under A, right under B), n10 (right under A,
    wrong under B), p, effect = accuracy(A) - accuracy(B) = (n10 - n01) / n, and lo, hi (95%,
    Newcombe's paired score interval of that difference)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"need two vectors over the same images, got shapes {a.shape} and {b.shape}")
    n = len(a)
    if n == 0:
        raise ValueError("no images to compare")
    n10, n01 = int((a & ~b).sum()), int((~a & b).sum())
    n11, n00 = int((a & b).sum()), int((~a & ~b).sum())
    m = n10 + n01
    p = 1.0 if m == 0 else min(1.0, 2 * _binomial_tail_half(min(n10, n01), m))
    lo, hi = _newcombe(n11, n10, n01, n00)
    return {"n": n, "n01": n01, "n10": n10, "p": p, "effect": (n10 - n01) / n, "lo": lo, "hi": hi,
            "test": "mcnemar_exact"}


def _same_images(xa, ea, xb, eb) -> None:
    if len(xa) != len(xb) or not np.allclose(xa, xb, rtol=1e-9, atol=1e-12):
        raise ValueError(f"the two curves have different points: {list(xa)} vs {list(xb)}")
    bad = [float(x) for x, p, q in zip(xa, ea, eb) if p != q]
    if bad:
        raise ValueError(f"not evaluated on the same images at x = {bad} (different `examples` keys): "
                         "a paired test needs the same images; compare the means instead")


def paired_bootstrap(a_rows, b_rows, stat: str | Callable = "auc", n_boot: int = 2000, seed: int = 0,
                     column: str = "correct", level: float = 0.95) -> dict:
    """Paired bootstrap over images of stat(A) - stat(B), where stat maps a curve (xs and the
    proportion of `column` at each x) to a number: "auc" (area over the x range, as the
    metrics' `.auc` scalars), "mean", "min", or f(xs, p) reducing p's last axis. Both trials'
    rows must hold the same images at every x. Returns effect (on the data), lo, hi (percentile
    interval), p (two-sided: twice the smaller share of resampled differences on either side
    of 0), se, n (images), n_boot."""
    f = STATS[stat] if isinstance(stat, str) else stat
    xa, ea, A = vectors(a_rows, column)
    xb, eb, B = vectors(b_rows, column)
    _same_images(xa, ea, xb, eb)
    if A.shape != B.shape:
        raise ValueError(f"different numbers of images: {A.shape[1]} vs {B.shape[1]}")
    n = A.shape[1]
    rng = np.random.default_rng(seed)
    effect = float(f(xa, A.mean(1)) - f(xa, B.mean(1)))
    out, batch = [], max(1, min(n_boot, 2_000_000 // max(n, 1)))
    Af, Bf = A.astype(np.float32), B.astype(np.float32)
    done = 0
    while done < n_boot:
        k = min(batch, n_boot - done)
        # How often each image is drawn in each of k resamples: [k, n] weights summing to 1.
        idx = rng.integers(0, n, size=(k, n)) + (np.arange(k) * n)[:, None]
        w = np.bincount(idx.ravel(), minlength=k * n).reshape(k, n).astype(np.float32) / n
        out.append(np.asarray(f(xa, w @ Af.T) - f(xa, w @ Bf.T), dtype=float))
        done += k
    d = np.concatenate(out)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(d, [alpha, 1 - alpha])
    p = min(1.0, 2 * min(np.mean(d <= 0), np.mean(d >= 0))) if (A != B).any() else 1.0
    return {"n": n, "n_boot": n_boot, "effect": effect, "lo": float(lo), "hi": float(hi), "p": float(p),
            "se": float(d.std(ddof=1)) if len(d) > 1 else float("nan"), "test": "paired_bootstrap"}


def compare(outcomes: pd.DataFrame | str | Path, a: str, b: str, metric: str, x: float | None = None,
            column: str = "correct", **bootstrap) -> dict:
    """Trial a against trial b on `metric` (e.g. robustness.pgd, or accuracy at x = 0): the exact
    McNemar test at one point `x`, else the paired bootstrap of the curve's AUC (`stat=` and the
    other keywords of paired_bootstrap pass through)."""
    df = outcomes if isinstance(outcomes, pd.DataFrame) else load_outcomes(outcomes)
    rows = {}
    for t in (a, b):
        r = df[(df["trial_id"] == t) & (df["metric"] == metric)]
        if x is not None:
            r = r[np.isclose(r["x"].astype(float), x, rtol=1e-4, atol=1e-9)]
        if r.empty:
            where = f" at x = {x:g}" if x is not None else ""
            raise ValueError(f"no outcomes of '{metric}'{where} for trial {t}")
        rows[t] = r
    if x is None:
        return paired_bootstrap(rows[a], rows[b], column=column, **bootstrap)
    (_, ea, va), (_, eb, vb) = vectors(rows[a], column), vectors(rows[b], column)
    _same_images([x], ea, [x], eb)
    return mcnemar_exact(va[0], vb[0])
