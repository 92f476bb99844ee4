"""A claim's metric recomputed from per-example outcomes (outcomes.parquet, analysis/paired.py),
so that one seed can still give an interval: the evaluated examples are resampled.

Which outcomes a metric is made of:
  robustness.pgd@0.1[:accuracy|consistency]   the rows of curve robustness.pgd at x = 0.1,
  robustness.pgd.acc@0.1                      column `correct` (or `consistent`)
  accuracy (any scalar with rows of its own)  its single row (uncertainty writes x = 0)
  <curve>.auc / .accuracy_auc / .consistency_auc   the curve's rows, as the normalized
                                              trapezoid area over x
A candidate is used only if it reproduces, on the full sample, the value each trial recorded
(within 1e-6): the AUC's grid (every x, or every x but one, as when `acc_at` adds a point the
AUC leaves out) and its column are the ones that do, so a wrong mapping cannot pass silently.

The bootstrap resamples the examples of each evaluated subset (its `examples` hash) once per
replicate and applies the same draw to every trial evaluated on it: trials compared on the same
images stay paired.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from raystudy.spec.claimspec import as_number, split_point

from .claim_stats import N_BOOT, percentile, trend_stat
from .paired import unpack

CHUNK = 200
COLUMN_OF = {"": "correct", "accuracy": "correct", "consistency": "consistent"}


@dataclass
class TrialOutcomes:
    """One trial's outcomes behind a claim's metric: (n_x, n) 0/1 matrix over its examples."""

    examples: str
    xs: np.ndarray
    m: np.ndarray
    auc: bool

    @property
    def n(self) -> int:
        return self.m.shape[1]

    def value(self, w: np.ndarray | None = None) -> np.ndarray | float:
        """The metric on the full sample (w None) or under each row of example weights w (R, n)."""
        acc = self.m.mean(axis=1) if w is None else (w @ self.m.T) / w.sum(axis=1, keepdims=True)
        if not self.auc or len(self.xs) == 1 or self.xs[-1] == self.xs[0]:
            return acc[..., 0]
        dx = np.diff(self.xs)
        area = ((acc[..., 1:] + acc[..., :-1]) / 2 * dx).sum(axis=-1)
        return area / (self.xs[-1] - self.xs[0])

    def vector(self) -> np.ndarray:
        return self.m[0] > 0.5


def _candidates(ref: str) -> list[tuple[str, float | None, str, bool]]:
    """(outcome metric, x or None for every x, column, auc) that could make up `ref`."""
    metric, x, col = split_point(ref)
    if x is not None:
        if metric.endswith(".acc") and not col:
            metric = metric[: -len(".acc")]
        column = COLUMN_OF.get(col)
        xv = as_number(x)
        return [(metric, xv, column, False)] if column and xv is not None else []
    out = [(ref, None, "correct", False), (ref, None, "consistent", False)]
    for suffix in (".auc", ".accuracy_auc", ".consistency_auc"):
        if ref.endswith(suffix):
            out += [(ref[: -len(suffix)], None, c, True) for c in ("correct", "consistent")]
    return out


class OutcomeIndex:
    """outcomes.parquet, unpacked on demand."""

    def __init__(self, df: pd.DataFrame | None):
        df = df if df is not None else pd.DataFrame()
        self.rows = {k: g for k, g in df.groupby(["trial_id", "metric"])} if len(df) else {}

    def __bool__(self) -> bool:
        return bool(self.rows)

    def _matrix(self, tid: str, metric: str, x: float | None, column: str, drop: float | None):
        g = self.rows.get((tid, metric))
        if g is None or column not in g.columns:
            return None
        g = g.sort_values("x")
        xs = pd.to_numeric(g["x"], errors="coerce").to_numpy(dtype=float)
        keep = np.ones(len(g), bool) if x is None else np.isclose(xs, x, rtol=1e-4, atol=1e-9)
        if drop is not None:
            keep &= ~np.isclose(xs, drop, rtol=1e-4, atol=1e-9)
        g, xs = g[keep], xs[keep]
        if g.empty or g[column].isna().any() or g["examples"].nunique() != 1:
            return None
        n = int(g["n"].iloc[0])
        m = np.stack([unpack(b, n) for b in g[column]]).astype(np.float32)
        return str(g["examples"].iloc[0]), xs, m

    def lookup(self, ref: str, recorded: pd.Series) -> dict[str, TrialOutcomes] | str:
        """Outcomes of every trial in `recorded` (trial_id -> recorded value of `ref`), or why not."""
        if not self.rows:
            return "no per-example outcomes in this results folder (outcomes.parquet)"
        for metric, x, column, auc in _candidates(ref):
            drops = [None]
            if auc:
                first = self.rows.get((recorded.index[0], metric))
                drops += sorted(set(pd.to_numeric(first["x"], errors="coerce"))) if first is not None else []
            for drop in drops:
                found = self._reproduce(recorded, metric, x, column, auc, drop)
                if found is not None:
                    return found
        return f"no per-example outcomes reproduce {ref}"

    def _reproduce(self, recorded: pd.Series, metric, x, column, auc, drop) -> dict[str, TrialOutcomes] | None:
        out = {}
        for tid, want in recorded.items():
            got = self._matrix(tid, metric, x, column, drop)
            if got is None or (not auc and len(got[1]) != 1):
                return None
            t = TrialOutcomes(got[0], got[1], got[2], auc)
            if not math.isclose(float(t.value()), float(want), rel_tol=1e-6, abs_tol=1e-6):
                return None
            out[tid] = t
        return out


def _weights(rng: np.random.Generator, sizes: dict[str, int], r: int) -> dict[str, np.ndarray]:
    """One multinomial resample of each examples set per replicate (r replicates)."""
    return {h: rng.multinomial(n, np.full(n, 1.0 / n), size=r).astype(np.float32) for h, n in sizes.items()}


def _sizes(trials) -> dict[str, int]:
    return {t.examples: t.n for t in trials}


def bootstrap_pairs(pairs: list[tuple[list[TrialOutcomes], list[TrialOutcomes]]], n_boot: int = N_BOOT,
                    seed: int = 0) -> tuple[float, float, float, int]:
    """(effect, lo, hi, examples): the mean over pairs of mean(a) − mean(b), its interval from
    resampling examples (paired bootstrap)."""
    sizes = _sizes([t for a, b in pairs for t in a + b])

    def effect(w):
        def side(ts):
            return np.mean([t.value(None if w is None else w[t.examples]) for t in ts], axis=0)
        return np.mean([side(a) - side(b) for a, b in pairs], axis=0)

    rng = np.random.default_rng(seed)
    draws = [effect(_weights(rng, sizes, min(CHUNK, n_boot - i))) for i in range(0, n_boot, CHUNK)]
    return (float(effect(None)), *percentile(np.concatenate(draws)), sum(sizes.values()))


def bootstrap_trend(groups: list[tuple[np.ndarray, list[TrialOutcomes]]], kind: str, n_boot: int = N_BOOT,
                    seed: int = 0) -> tuple[float, float, float, int]:
    """(effect, lo, hi, examples): the mean over groups of the trend statistic, its interval from
    resampling the examples every trial of a group was evaluated on."""
    sizes = _sizes([t for _, ts in groups for t in ts])

    def effect(w, r):
        stats = [trend_stat(over, np.stack([np.broadcast_to(t.value(None if w is None else w[t.examples]), (r,))
                                            for t in ts], axis=1), kind) for over, ts in groups]
        return np.mean(stats, axis=0)

    rng = np.random.default_rng(seed)
    draws = []
    for i in range(0, n_boot, CHUNK):
        r = min(CHUNK, n_boot - i)
        draws.append(effect(_weights(rng, sizes, r), r))
    return (float(effect(None, 1)[0]), *percentile(np.concatenate(draws)), sum(sizes.values()))
