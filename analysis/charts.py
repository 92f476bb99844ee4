"""Altair chart builders: pure functions DataFrame -> alt.Chart (no file or Ray access).

Inputs are the documented tables (see analysis/README.md): per-trial rows with
config columns (dotted names) and scalar metrics, or curve rows (metric, x, value
columns) already joined with config columns (`Tables.curves_with_config()`).
Seeds are aggregated inside: lines are means, bands the 95% CI (or ± std).

Vega-Lite reads dots in field names as nested access, so every builder renames
the columns it uses to plain identifiers and keeps the dotted name as the title.
"""

from __future__ import annotations

import re
from typing import Mapping, Sequence

import altair as alt
import numpy as np
import pandas as pd

from .aggregate import aggregate, band as add_band, profile_band
from .pareto import attainment, directions

WIDTH, HEIGHT = 360, 240
FMT = ".4g"


def safe(name: str) -> str:
    """A Vega-Lite field name for a column (no dots, brackets or spaces)."""
    return re.sub(r"[^0-9A-Za-z_]", "_", str(name))


def prep(df: pd.DataFrame, cols: Sequence[str | None]) -> tuple[pd.DataFrame, dict[str, str]]:
    """Copy of df with only `cols`, renamed to safe names; returns (data, original -> safe)."""
    cols = [c for c in dict.fromkeys(cols) if c]
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise KeyError(f"no column(s) {missing} (have: {list(df.columns)})")
    names: dict[str, str] = {}
    used: set[str] = set()
    for c in cols:
        s = safe(c)
        while s in used:
            s += "_"
        used.add(s)
        names[c] = s
    return df[cols].rename(columns=names).reset_index(drop=True), names


def _nominal_or_ordinal(s: pd.Series) -> str:
    return "ordinal" if pd.api.types.is_numeric_dtype(s) else "nominal"


def _color_type(s: pd.Series) -> str:
    if pd.api.types.is_numeric_dtype(s) and s.nunique() > 12:
        return "quantitative"
    return _nominal_or_ordinal(s)


def _color(data_col: str, s: pd.Series, title: str) -> alt.Color:
    """Discrete colours for a few config values, kept in numeric order; a gradient for many."""
    kind = _color_type(s)
    # Vega's default ordinal ramp makes the smallest value nearly white: use distinct hues.
    scale = alt.Scale(scheme="tableau10") if kind == "ordinal" else alt.Undefined
    return alt.Color(data_col, type=kind, title=title, scale=scale)


def curve_x_title(rows: pd.DataFrame) -> str:
    """The x-axis title of curve rows: their `x_title` column (each metric names its own x, e.g.
    'ε (L∞ pixel units)'); a neutral "x" for curves recorded before metrics wrote one."""
    if "x_title" not in rows.columns:
        return "x"
    titles = [str(t) for t in dict.fromkeys(rows["x_title"].dropna()) if str(t)]
    return " / ".join(titles) if titles else "x"


def _title(text: str | None, sub: str | None = None):
    if not text:
        return alt.Undefined
    return alt.Title(text, subtitle=sub) if sub else alt.Title(text)


def _clip_rates(agg: pd.DataFrame, raw: pd.Series) -> pd.DataFrame:
    """Bands of a quantity whose every value lies in [0, 1] (accuracy, a rate) stay in [0, 1]:
    a t-interval from 2-3 seeds easily spans below 0, which no accuracy can reach."""
    v = pd.to_numeric(raw, errors="coerce").dropna()
    if len(v) and v.min() >= 0 and v.max() <= 1:
        agg = agg.assign(lo=agg["lo"].clip(0, 1), hi=agg["hi"].clip(0, 1))
    return agg


def _band_note(agg: pd.DataFrame, band: str, note: str | None = None) -> str:
    if note:
        return note
    n = agg["n"]
    seeds = f"n={int(n.min())}" if n.min() == n.max() else f"n={int(n.min())}–{int(n.max())}"
    what = {"ci": "band: 95% CI over seeds", "std": "band: mean ± std over seeds", "none": "mean over seeds"}[band]
    return f"{what} ({seeds})"


def _mean_band(agg: pd.DataFrame, x: str, y_title: str, color: str | None, column: str | None,
               x_title: str, band: str, x_type: str, title: str | None, log_x: bool = False,
               raw: pd.Series | None = None, note: str | None = None) -> alt.Chart:
    """Mean line with points and a seed band; the shared body of profile / line / epochs."""
    agg = add_band(agg, band)
    if raw is not None:
        agg = _clip_rates(agg, raw)
    data, f = prep(agg, [x, color, column, "mean", "lo", "hi", "std", "n"])
    scale = alt.Scale(type="log", nice=False) if log_x else alt.Scale(zero=False)
    enc_x = alt.X(f[x], type=x_type, title=x_title, scale=scale)
    tips = [alt.Tooltip(f[c], title=c) for c in (color, column) if c] + [
        alt.Tooltip(f[x], title=x_title, format=FMT if x_type == "quantitative" else ""),
        alt.Tooltip("mean", title=f"{y_title} (mean)", format=FMT),
        alt.Tooltip("std", format=FMT), alt.Tooltip("lo", title="band low", format=FMT),
        alt.Tooltip("hi", title="band high", format=FMT), alt.Tooltip("n", title="seeds")]
    base = alt.Chart(data)
    col_enc = _color(f[color], agg[color], color) if color else alt.Undefined
    line = base.mark_line(point=True).encode(x=enc_x, y=alt.Y("mean", type="quantitative", title=y_title,
                                                            scale=alt.Scale(zero=False)),
                                             color=col_enc, tooltip=tips)
    layers = [line]
    if band != "none" and data["lo"].notna().any():
        area = base.mark_area(opacity=0.2).encode(x=enc_x, y=alt.Y("lo", type="quantitative"),
                                                  y2=alt.Y2("hi"), color=col_enc)
        layers.insert(0, area)
    chart = alt.layer(*layers).properties(width=WIDTH, height=HEIGHT)
    if column:
        chart = chart.facet(column=alt.Column(f[column], type=_nominal_or_ordinal(agg[column]), title=column))
    return chart.properties(title=_title(title or y_title, _band_note(agg, band, note)))


def profile_chart(curves: pd.DataFrame, metric: str, *, y: str = "accuracy", color: str | None = None,
                  column: str | None = None, band: str = "auto", title: str | None = None,
                  x_title: str | None = None) -> alt.Chart:
    """A robustness (value vs ε) or invariance (value vs θ) profile, seeds aggregated.

    `curves`: rows with metric, x, `y` and the config columns named by color/column; the x axis
    is titled `x_title`, else by the rows' `x_title` column (see curve_x_title). `band`: auto
    (the 95% Wilson interval over the evaluated images when the rows carry `<y>_lo`/`<y>_hi`,
    widened to the seed CI where a point has several seeds; else the seed CI), wilson, ci, std,
    none.
    """
    rows = curves[curves["metric"] == metric]
    if rows.empty:
        raise ValueError(f"no curve rows with metric '{metric}'")
    by = [c for c in (color, column) if c] + ["x"]
    agg, note = profile_band(aggregate(rows, by, y), rows, by, y, band)
    shown = "given" if note else ("ci" if band == "auto" else band)
    return _mean_band(agg, "x", y, color, column, x_title or curve_x_title(rows), shown, "quantitative",
                      title or f"{metric}: {y}", raw=rows[y], note=note)


def line_chart(trials: pd.DataFrame, x: str, y: str, *, color: str | None = None, column: str | None = None,
               band: str = "ci", log_x: bool = False, title: str | None = None) -> alt.Chart:
    """A scalar over a config axis (e.g. hessian.top1 vs train.batch_size per lr_rule)."""
    agg = aggregate(trials, [c for c in (color, column) if c] + [x], y).dropna(subset=["mean"])
    x_type = "quantitative" if pd.api.types.is_numeric_dtype(trials[x]) else "ordinal"
    return _mean_band(agg, x, y, color, column, x, band, x_type, title or f"{y} vs {x}", log_x=log_x,
                      raw=trials[y])


def epochs_chart(epochs: pd.DataFrame, y: str = "val_accuracy", *, color: str | None = None,
                 column: str | None = None, band: str = "ci", title: str | None = None) -> alt.Chart:
    """A training log column over epochs (epochs.parquet joined with config)."""
    agg = aggregate(epochs, [c for c in (color, column) if c] + ["epoch"], y).dropna(subset=["mean"])
    return _mean_band(agg, "epoch", y, color, column, "epoch", band, "quantitative",
                      title or f"{y} per epoch", raw=epochs[y])


def bar_chart(trials: pd.DataFrame, x: str, y: str, *, color: str | None = None, band: str = "ci",
              title: str | None = None) -> alt.Chart:
    """Mean of a scalar per config value, error bars over seeds, each seed as a dot."""
    agg = _clip_rates(add_band(aggregate(trials, [c for c in (x, color) if c], y), band), trials[y])
    data, f = prep(agg, [x, color, "mean", "lo", "hi", "std", "n"])
    xt = _nominal_or_ordinal(trials[x])
    offset = alt.XOffset(f[color], type=_nominal_or_ordinal(trials[color])) if color else alt.Undefined
    col = _color(f[color], trials[color], color) if color else alt.Undefined
    tips = [alt.Tooltip(f[c], title=c) for c in (x, color) if c] + [
        alt.Tooltip("mean", title=f"{y} (mean)", format=FMT), alt.Tooltip("std", format=FMT),
        alt.Tooltip("lo", title="band low", format=FMT), alt.Tooltip("hi", title="band high", format=FMT),
        alt.Tooltip("n", title="seeds")]
    enc_x = alt.X(f[x], type=xt, title=x, axis=alt.Axis(labelAngle=0))
    bars = alt.Chart(data).mark_bar(opacity=0.8).encode(
        x=enc_x, xOffset=offset, y=alt.Y("mean", type="quantitative", title=y), color=col, tooltip=tips)
    layers = [bars]
    if band != "none" and data["lo"].notna().any():
        layers.append(alt.Chart(data).mark_errorbar(ticks=True).encode(
            x=enc_x, xOffset=offset, y=alt.Y("lo", type="quantitative", title=y), y2=alt.Y2("hi"),
            color=alt.value("#333")))
    pts, pf = prep(trials, [x, color, y, "trial_id" if "trial_id" in trials.columns else None])
    pts = pts.dropna(subset=[pf[y]])
    ptips = [alt.Tooltip(pf[c], title=c) for c in pf]
    layers.append(alt.Chart(pts).mark_circle(size=30, color="black", opacity=0.7).encode(
        x=alt.X(pf[x], type=xt, title=x, axis=alt.Axis(labelAngle=0)),
        xOffset=alt.XOffset(pf[color], type=_nominal_or_ordinal(trials[color])) if color else alt.Undefined,
        y=alt.Y(pf[y], type="quantitative"), tooltip=ptips))
    return alt.layer(*layers).properties(width=WIDTH, height=HEIGHT,
                                         title=_title(title or f"{y} by {x}", _band_note(agg, band)))


def heatmap_chart(trials: pd.DataFrame, x: str, y: str, value: str, *, title: str | None = None,
                  scheme: str = "viridis") -> alt.Chart:
    """Mean of `value` over seeds on a grid of two config axes, each cell labelled."""
    agg = aggregate(trials, [x, y], value).dropna(subset=["mean"])
    data, f = prep(agg, [x, y, "mean", "std", "n"])
    base = alt.Chart(data).encode(
        x=alt.X(f[x], type=_nominal_or_ordinal(agg[x]), title=x, axis=alt.Axis(labelAngle=0)),
        y=alt.Y(f[y], type=_nominal_or_ordinal(agg[y]), title=y, sort="descending"))
    tips = [alt.Tooltip(f[x], title=x), alt.Tooltip(f[y], title=y),
            alt.Tooltip("mean", title=f"{value} (mean)", format=FMT), alt.Tooltip("std", format=FMT),
            alt.Tooltip("n", title="seeds")]
    rect = base.mark_rect().encode(color=alt.Color("mean", type="quantitative", title=value,
                                                   scale=alt.Scale(scheme=scheme)), tooltip=tips)
    mid = float(np.nanmean([data["mean"].min(), data["mean"].max()])) if len(data) else 0.0
    text = base.mark_text(fontSize=11).encode(
        text=alt.Text("mean", type="quantitative", format=".3g"),
        color=alt.condition(alt.datum.mean > mid, alt.value("black"), alt.value("white")))
    return alt.layer(rect, text).properties(width=WIDTH, height=HEIGHT,
                                            title=_title(title or f"{value} over {x} × {y}", "mean over seeds"))


def pareto_chart(df: pd.DataFrame, x: str, y: str, *, maximize: Sequence[str] | None = None,
                 minimize: Sequence[str] | None = None, color: str | None = None, label: str = "label",
                 title: str | None = None) -> alt.Chart:
    """Scatter of two objectives with the Pareto front drawn and every point labelled.

    Rows sharing a `label` (seeds of one configuration) are averaged first. Objectives
    are x, y and any further column named in maximize / minimize; all are maximized
    unless listed in `minimize`. With exactly two objectives the front is drawn as its
    attainment staircase; with more, front points are marked but no line is drawn.
    """
    dirs = directions([x, y], maximize, minimize)
    objs = list(dirs)
    keep = [label, *objs, *([color] if color and color not in (label, *objs) else [])]
    if label not in df.columns:
        raise KeyError(f"no column '{label}' to label points (have: {list(df.columns)})")
    g = df[keep].groupby(label, sort=False, dropna=False)
    pts = g[objs].mean()
    pts["n"] = g.size()
    if color and color not in (label, *objs):
        pts[color] = g[color].first()
    pts = attainment(pts.reset_index(), dirs)
    pts["front"] = np.where(pts["on_front"], "on the front", "dominated")
    data, f = prep(pts, [label, *objs, color if color not in (label, *objs) else None, "front", "rank",
                          "eps_gap", "distance", "n"])
    data = data.dropna(subset=[f[x], f[y]])
    arrows = {"max": "↑", "min": "↓"}
    ex = alt.X(f[x], type="quantitative", title=f"{x} ({arrows[dirs[x]]} better)", scale=alt.Scale(zero=False))
    ey = alt.Y(f[y], type="quantitative", title=f"{y} ({arrows[dirs[y]]} better)", scale=alt.Scale(zero=False))
    tips = [alt.Tooltip(f[label], title=label)] + [alt.Tooltip(f[o], title=o, format=FMT) for o in objs] + [
        alt.Tooltip("front"), alt.Tooltip("rank"), alt.Tooltip("eps_gap", title="ε gap to front", format=FMT),
        alt.Tooltip("distance", title="scaled distance to front", format=FMT), alt.Tooltip("n", title="seeds")]
    col = _color(f[color], pts[color], color) if color else \
        alt.Color("front", type="nominal", title="Pareto", scale=alt.Scale(domain=["on the front", "dominated"],
                                                                           range=["#d62728", "#7f7f7f"]))
    base = alt.Chart(data)
    layers = []
    if len(objs) == 2:
        front = data[data["front"] == "on the front"]
        layers.append(alt.Chart(front).mark_line(
            interpolate="step-before" if dirs[x] == "max" else "step-after", color="#d62728",
            strokeDash=[4, 3]).encode(x=ex, y=ey, order=alt.Order(f[x], type="quantitative")))
    layers.append(base.mark_point(filled=True, size=80).encode(
        x=ex, y=ey, color=col, tooltip=tips,
        # Same field and title as the default colour, so the two legends merge into one.
        shape=alt.Shape("front", type="nominal", title="Pareto",
                        scale=alt.Scale(domain=["on the front", "dominated"], range=["square", "circle"]))))
    # Labels of points in the right half point left, so they stay inside the plot.
    mid = (data[f[x]].min() + data[f[x]].max()) / 2
    for side, rows in (("left", data[data[f[x]] <= mid]), ("right", data[data[f[x]] > mid])):
        layers.append(alt.Chart(rows).mark_text(align=side, dx=7 if side == "left" else -7, dy=-8,
                                                fontSize=10).encode(x=ex, y=ey, text=alt.Text(f[label], type="nominal")))
    extra = [o for o in objs if o not in (x, y)]
    sub = "front over " + ", ".join(f"{o} ({dirs[o]})" for o in objs) + ("; seeds averaged" if
                                                                         (pts["n"] > 1).any() else "")
    return alt.layer(*layers).properties(width=WIDTH + 80, height=HEIGHT + 60,
                                         title=_title(title or f"Pareto front: {y} vs {x}"
                                                      + (f" (+{', '.join(extra)})" if extra else ""), sub))


def density_chart(curves: pd.DataFrame, metric: str = "hessian.density", *, y: str = "density",
                  color: str | None = None, column: str | None = None, log_y: bool = True,
                  floor: float = 1e-8, title: str | None = None, x_title: str | None = None) -> alt.Chart:
    """Hessian eigenvalue density (stochastic Lanczos quadrature), one line per trial; the x axis
    is titled as in profile_chart."""
    rows = curves[curves["metric"] == metric]
    if rows.empty:
        raise ValueError(f"no curve rows with metric '{metric}'")
    if log_y:
        # A log axis cannot show zeros, and the Gaussian-smoothed density falls to 1e-100 far from the
        # bulk; below floor × the peak nothing is readable, so those grid points are dropped.
        v = pd.to_numeric(rows[y], errors="coerce")
        rows = rows[v > floor * v.max()]
    x_title = x_title or curve_x_title(rows)
    data, f = prep(rows, ["trial_id", "x", y, color, column, "label" if "label" in rows.columns else None])
    tips = [alt.Tooltip(f[c], title=c) for c in f if c not in ("x", y)] + [
        alt.Tooltip("x", title=x_title, format=FMT), alt.Tooltip(f[y], title=y, format=FMT)]
    chart = alt.Chart(data).mark_line(opacity=0.8, strokeWidth=1.2).encode(
        x=alt.X("x", type="quantitative", title=x_title),
        y=alt.Y(f[y], type="quantitative", title=y, scale=alt.Scale(type="log") if log_y else alt.Undefined),
        color=_color(f[color], rows[color], color) if color else alt.Undefined,
        detail=alt.Detail("trial_id", type="nominal"), tooltip=tips).properties(width=WIDTH, height=HEIGHT)
    if column:
        chart = chart.facet(column=alt.Column(f[column], type=_nominal_or_ordinal(rows[column]), title=column))
    return chart.properties(title=_title(title or f"{metric}", "one line per trial"))


def transfer_chart(df: pd.DataFrame, *, source: str = "source", target: str = "target",
                   value: str = "accuracy", title: str | None = None) -> alt.Chart:
    """Transfer-attack matrix: rows craft the attack (source), columns are attacked (target)."""
    agg = aggregate(df, [source, target], value)
    data, f = prep(agg, [source, target, "mean", "n"])
    base = alt.Chart(data).encode(x=alt.X(f[target], type="nominal", title=f"{target} (attacked model)"),
                                  y=alt.Y(f[source], type="nominal", title=f"{source} (attack crafted on)"))
    rect = base.mark_rect().encode(
        color=alt.Color("mean", type="quantitative", title=value, scale=alt.Scale(scheme="blues")),
        tooltip=[alt.Tooltip(f[source], title=source), alt.Tooltip(f[target], title=target),
                 alt.Tooltip("mean", title=value, format=FMT), alt.Tooltip("n")])
    mid = float(np.nanmean([data["mean"].min(), data["mean"].max()])) if len(data) else 0.0
    text = base.mark_text(fontSize=11).encode(
        text=alt.Text("mean", type="quantitative", format=".3f"),
        color=alt.condition(alt.datum.mean > mid, alt.value("white"), alt.value("black")))
    return alt.layer(rect, text).properties(width=WIDTH, height=HEIGHT,
                                            title=_title(title or f"transfer attacks: {value}"))


def table_chart(df: pd.DataFrame, rows: str, columns: Mapping[str, str], *, title: str | None = None,
                subtitle: str | None = None) -> alt.Chart:
    """A table as a chart: one row per `rows` value, one column per (display name -> value column),
    each cell 'mean ± std' over seeds, shaded by its value within its column."""
    long = []
    for disp, colname in columns.items():
        a = aggregate(df, rows, colname)
        a["column"] = disp
        long.append(a)
    agg = pd.concat(long, ignore_index=True)
    agg["text"] = [("—" if pd.isna(m) else f"{m:.3f}" + ("" if pd.isna(s) else f" ± {s:.3f}"))
                   for m, s in zip(agg["mean"], agg["std"])]
    # Shade within each column so a column of small numbers is not washed out by another.
    agg["shade"] = agg.groupby("column")["mean"].transform(
        lambda s: (s - s.min()) / (s.max() - s.min()) if s.max() > s.min() else 0.5)
    data, f = prep(agg, [rows, "column", "value", "text", "mean", "std", "n", "shade"])
    order = list(columns)
    row_order = list(dict.fromkeys(df[rows].tolist()))
    base = alt.Chart(data).encode(
        # An explicit domain as well as the sort: in a layered chart Vega-Lite otherwise
        # merges the two layers' domains alphabetically.
        x=alt.X("column", type="nominal", sort=order, scale=alt.Scale(domain=order), title=None,
                axis=alt.Axis(orient="top", labelAngle=0)),
        y=alt.Y(f[rows], type="nominal", sort=row_order, title=rows))
    rect = base.mark_rect(stroke="white").encode(
        color=alt.Color("shade", type="quantitative", scale=alt.Scale(scheme="greens", domain=[0, 1]),
                        legend=None),
        tooltip=[alt.Tooltip(f[rows], title=rows), alt.Tooltip("column"), alt.Tooltip("value", title="source column"),
                 alt.Tooltip("mean", format=FMT), alt.Tooltip("std", format=FMT), alt.Tooltip("n", title="seeds")])
    text = base.mark_text(fontSize=12).encode(text=alt.Text("text", type="nominal"))
    return alt.layer(rect, text).properties(width=150 * len(order), height=alt.Step(26),
                                            title=_title(title or "table", subtitle))


CUSP_COLUMNS = {"natural": "accuracy", "spatial T180": "invariance.rotation@180",
                "adversarial 8/255": "robustness.pgd@8/255"}


def cusp_table_chart(df: pd.DataFrame, rows: str = "label", columns: Mapping[str, str] | None = None,
                     *, title: str | None = None) -> alt.Chart:
    """The CuSP table (Table 1 of the spatial-vs-adversarial paper): natural accuracy, spatial
    accuracy under random rotations in [-180°, 180°] and PGD accuracy at ε = 8/255 per model."""
    return table_chart(df, rows, columns or CUSP_COLUMNS, title=title or "natural, spatial and adversarial accuracy",
                       subtitle="mean ± std over seeds")
