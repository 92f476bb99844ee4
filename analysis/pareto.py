"""Pareto fronts for any number of objectives, each maximized or minimized.

Conventions (chosen so results do not depend on row order):
- a dominates b when a is at least as good in every objective and strictly
  better in one; equal points (duplicates) do not dominate each other, so all
  copies of a front point are on the front;
- a row with NaN in any objective is not comparable: it is never on the front,
  dominates nothing, and its rank and distances are NaN.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

Objectives = Mapping[str, str] | Sequence[str]


def directions(objectives: Objectives, maximize: Sequence[str] | None = None,
               minimize: Sequence[str] | None = None) -> dict[str, str]:
    """{column: 'max' | 'min'}; a plain list is maximized unless named in `minimize`."""
    if isinstance(objectives, Mapping):
        out = {}
        for k, d in objectives.items():
            d = str(d).lower()
            if d not in ("max", "min"):
                raise ValueError(f"objective '{k}': direction must be 'max' or 'min', got {d!r}")
            out[k] = d
    else:
        minimize = set(minimize or [])
        both = minimize & set(maximize or [])
        if both:
            raise ValueError(f"objective(s) {sorted(both)} are both maximized and minimized")
        out = {k: ("min" if k in minimize else "max") for k in objectives}
        for k in maximize or []:
            out.setdefault(k, "max")
        for k in minimize:
            out.setdefault(k, "min")
    if not out:
        raise ValueError("a Pareto front needs at least one objective")
    return out


def _matrix(df: pd.DataFrame, dirs: dict[str, str]) -> np.ndarray:
    """Objectives as 'larger is better' floats (minimized ones negated)."""
    missing = [k for k in dirs if k not in df.columns]
    if missing:
        raise KeyError(f"pareto: no column(s) {missing} (have: {list(df.columns)})")
    cols = [pd.to_numeric(df[k], errors="coerce").to_numpy(dtype=float) for k in dirs]
    m = np.stack(cols, axis=1) if cols else np.empty((len(df), 0))
    return m * np.array([1.0 if d == "max" else -1.0 for d in dirs.values()])


def _dominators(m: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """count[i] = number of valid rows that dominate row i (NaN rows: -1)."""
    count = np.full(len(m), -1, dtype=int)
    vm = m[valid]
    for i in np.flatnonzero(valid):
        ge = (vm >= m[i]).all(axis=1)
        gt = (vm > m[i]).any(axis=1)
        count[i] = int((ge & gt).sum())
    return count


def non_dominated(df: pd.DataFrame, objectives: Objectives, *, maximize: Sequence[str] | None = None,
                  minimize: Sequence[str] | None = None) -> pd.Series:
    """Boolean Series (df's index): True for the rows on the Pareto front."""
    m = _matrix(df, directions(objectives, maximize, minimize))
    valid = ~np.isnan(m).any(axis=1)
    return pd.Series(_dominators(m, valid) == 0, index=df.index, name="on_front")


def pareto_front(df: pd.DataFrame, objectives: Objectives, **kw) -> pd.DataFrame:
    """The front's rows, sorted by the first objective (best first)."""
    dirs = directions(objectives, kw.get("maximize"), kw.get("minimize"))
    front = df[non_dominated(df, dirs)]
    first = next(iter(dirs))
    return front.sort_values(first, ascending=dirs[first] == "min", kind="stable")


def attainment(df: pd.DataFrame, objectives: Objectives, *, maximize: Sequence[str] | None = None,
               minimize: Sequence[str] | None = None) -> pd.DataFrame:
    """How far each row is from the front. Columns added to a copy of df:

    on_front      True for non-dominated rows;
    rank          non-domination layer: 1 = the front, 2 = the front once layer 1 is removed, ...;
    dominated_by  how many rows dominate this one;
    eps_gap       additive epsilon indicator in the objectives' own units: the least amount by
                  which every objective must improve for the row to weakly dominate some front
                  point (0 on the front);
    distance      Euclidean distance to the nearest front point after scaling each objective to
                  [0, 1] over the valid rows (0 on the front).
    """
    dirs = directions(objectives, maximize, minimize)
    m = _matrix(df, dirs)
    valid = ~np.isnan(m).any(axis=1)
    dom = _dominators(m, valid)
    out = df.copy()
    out["on_front"] = dom == 0
    out["dominated_by"] = np.where(valid, dom, np.nan)
    rank = np.full(len(m), np.nan)
    left = valid.copy()
    layer = 1
    while left.any():
        c = _dominators(m, left)
        layer_rows = left & (c == 0)
        rank[layer_rows] = layer
        left &= ~layer_rows
        layer += 1
    out["rank"] = rank
    eps = np.full(len(m), np.nan)
    dist = np.full(len(m), np.nan)
    front = m[dom == 0]
    if len(front):
        lo, hi = m[valid].min(axis=0), m[valid].max(axis=0)
        scale = np.where(hi > lo, hi - lo, 1.0)
        fz = (front - lo) / scale
        for i in np.flatnonzero(valid):
            eps[i] = max(0.0, float((front - m[i]).max(axis=1).min()))
            dist[i] = float(np.sqrt((((m[i] - lo) / scale - fz) ** 2).sum(axis=1)).min())
        dist[dom == 0] = 0.0
    out["eps_gap"] = eps
    out["distance"] = dist
    return out
