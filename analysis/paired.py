"""Paired comparisons of two trials evaluated on the same examples (per-example outcomes in
outcomes.parquet: trial_id, metric, x, n, examples, correct (np.packbits bytes), consistent).

Minimal version written by the `claims` helper so that analysis/claims.py runs before the
`uncertainty` helper's module lands (WAVE2.md names this module and these functions); the
lead keeps whichever is complete. No torch, no Ray.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from raystudy.layout import OUTCOMES, Layout

COLUMNS = ["trial_id", "metric", "x", "n", "examples", "correct", "consistent"]


def load_outcomes(results_dir: str | Path) -> pd.DataFrame:
    """outcomes.parquet of a results folder; an empty frame when there is none."""
    return Layout(results_dir).read_table(OUTCOMES, COLUMNS)


def unpack(bits: bytes, n: int) -> np.ndarray:
    """The n booleans that np.packbits packed into `bits`."""
    return np.unpackbits(np.frombuffer(bits, dtype=np.uint8), count=int(n)).astype(bool)


def mcnemar_exact(a, b) -> dict:
    """Exact McNemar test of two paired boolean vectors (a[i], b[i]: example i right under A, B):
    n10 = #(A right, B wrong), n01 = #(A wrong, B right); under H0 n10 ~ Bin(n10 + n01, 1/2),
    two-sided p = min(1, 2 · P(X <= min(n10, n01))). effect = accuracy(A) − accuracy(B)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"paired vectors differ in length ({len(a)} and {len(b)})")
    n10, n01 = int((a & ~b).sum()), int((~a & b).sum())
    d = n10 + n01
    p = 1.0 if d == 0 else min(1.0, 2.0 * float(stats.binom.cdf(min(n10, n01), d, 0.5)))
    return {"n01": n01, "n10": n10, "p": p, "effect": (n10 - n01) / len(a) if len(a) else float("nan")}
