"""Aggregate over seeds: mean, std, standard error and a Student-t 95% confidence interval.

The CI is mean ± t_{(1+level)/2, n-1} · std / sqrt(n) with the sample std (ddof=1):
seeds are few, so the normal quantile 1.96 would overstate confidence (with 3 seeds
t = 4.30). With a single seed std and the CI are NaN: there is no spread to report.
NaN values (a failed trial, a metric a trial did not measure) are left out and `n`
counts only the values that exist.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats

STAT_COLUMNS = ["n", "mean", "std", "sem", "ci_low", "ci_high"]


def summarize(values: Sequence[float] | np.ndarray | pd.Series, level: float = 0.95) -> dict[str, float]:
    """n, mean, std (ddof=1), sem, ci_low, ci_high of one sample, NaNs dropped."""
    v = pd.to_numeric(pd.Series(values, dtype="float64"), errors="coerce").dropna().to_numpy(dtype=float)
    n = len(v)
    if n == 0:
        return {"n": 0, "mean": np.nan, "std": np.nan, "sem": np.nan, "ci_low": np.nan, "ci_high": np.nan}
    mean = float(v.mean())
    if n == 1:
        return {"n": 1, "mean": mean, "std": np.nan, "sem": np.nan, "ci_low": np.nan, "ci_high": np.nan}
    std = float(v.std(ddof=1))
    sem = std / np.sqrt(n)
    half = float(stats.t.ppf((1 + level) / 2, n - 1)) * sem
    return {"n": n, "mean": mean, "std": std, "sem": sem, "ci_low": mean - half, "ci_high": mean + half}


def aggregate(df: pd.DataFrame, by: Sequence[str] | str | None, values: Sequence[str] | str,
              level: float = 0.95) -> pd.DataFrame:
    """One row per group of `by` (config columns) and value column.

    Returns the `by` columns, `value` (the name of the aggregated column) and
    n, mean, std, sem, ci_low, ci_high. Groups keep their first-seen order and
    missing keys (NaN in a `by` column) form their own group.
    """
    by = [by] if isinstance(by, str) else list(by or [])
    values = [values] if isinstance(values, str) else list(values)
    missing = [c for c in [*by, *values] if c not in df.columns]
    if missing:
        raise KeyError(f"aggregate: no column(s) {missing} (have: {list(df.columns)})")
    if not 0 < level < 1:
        raise ValueError(f"aggregate: level must be in (0, 1), got {level}")
    rows = []
    groups = df.groupby(by, dropna=False, sort=False) if by else [((), df)]
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        for v in values:
            rows.append({**dict(zip(by, key)), "value": v, **summarize(g[v], level)})
    out = pd.DataFrame(rows, columns=[*by, "value", *STAT_COLUMNS])
    out["n"] = out["n"].astype(int)
    return out


def band(agg: pd.DataFrame, kind: str = "ci") -> pd.DataFrame:
    """Add `lo`/`hi` columns for a chart band: ci (95% CI), std (mean ± std), none; `given`
    keeps the lo/hi the caller computed (e.g. a Wilson band)."""
    agg = agg.copy()
    if kind == "given":
        return agg
    if kind == "ci":
        agg["lo"], agg["hi"] = agg["ci_low"], agg["ci_high"]
    elif kind == "std":
        agg["lo"], agg["hi"] = agg["mean"] - agg["std"], agg["mean"] + agg["std"]
    elif kind == "none":
        agg["lo"], agg["hi"] = np.nan, np.nan
    else:
        raise ValueError(f"band must be ci, std or none, got {kind!r}")
    return agg


def wilson_band(rows: pd.DataFrame, by: Sequence[str], y: str) -> pd.DataFrame | None:
    """Per group of `by`: `wlo`, `whi`, the mean over the group's trials of each curve row's 95%
    Wilson bounds of `y` (columns `<y>_lo`, `<y>_hi`, written by the metric template), and
    `images`, the mean number of images per point. Each trial's interval holds its value, so the
    mean interval holds the mean. None when the rows carry no such bounds (recorded before
    raystudy stored them)."""
    lo, hi = f"{y}_lo", f"{y}_hi"
    if lo not in rows.columns or hi not in rows.columns or rows[lo].isna().all():
        return None
    cols = {lo: "wlo", hi: "whi", **({"n": "images"} if "n" in rows.columns else {})}
    num = rows[list(by)].copy()
    for c in cols:
        num[c] = pd.to_numeric(rows[c], errors="coerce")
    out = num.groupby(list(by), dropna=False, sort=False)[list(cols)].mean().reset_index()
    return out.rename(columns=cols)


def profile_band(agg: pd.DataFrame, rows: pd.DataFrame, by: list[str], y: str,
                 kind: str = "auto") -> tuple[pd.DataFrame, str | None]:
    """(agg with lo/hi, subtitle or None) for a profile's band of `kind` auto, wilson, ci, std or
    none (analysis.charts.profile_chart), given the aggregate of `rows` by `by`. Seeds of a study share their
    images, so the Wilson interval does not shrink with more seeds: with several seeds the band
    is the wider of it and the seed CI at each point, and never hides either source of error."""
    w = wilson_band(rows, by, y) if kind in ("auto", "wilson") else None
    if w is None:
        if kind == "wilson":
            raise ValueError(f"curve rows have no Wilson interval of '{y}' ({y}_lo, {y}_hi): recorded "
                             "before raystudy stored them; use band: ci")
        return band(agg, "ci" if kind == "auto" else kind), None
    agg = band(agg, "ci").merge(w, on=by, how="left")
    imgs = agg["images"].dropna() if "images" in agg.columns else pd.Series(dtype=float)
    images = "" if imgs.empty else (f" (n={imgs.min():.0f} images)" if imgs.min() == imgs.max()
                                    else f" (n={imgs.min():.0f}–{imgs.max():.0f} images)")
    if kind == "wilson" or not (agg["n"] > 1).any():
        agg["lo"], agg["hi"] = agg["wlo"], agg["whi"]
        return agg, f"band: 95% Wilson interval over the evaluated images{images}"
    agg["lo"], agg["hi"] = np.fmin(agg["ci_low"], agg["wlo"]), np.fmax(agg["ci_high"], agg["whi"])
    seeds = f"{agg['n'].min()}" if agg["n"].min() == agg["n"].max() else f"{agg['n'].min()}–{agg['n'].max()}"
    return agg, f"band: the wider of the 95% CI over seeds (n={seeds}) and the Wilson interval{images}"
