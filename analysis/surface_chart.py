"""The `surface` report chart: a curve over two coordinates as a heatmap.

Most curves have one coordinate (x); a surface's rows carry a second one as a column, e.g.
`spatial_attack.surface` (x = rotation θ, column `eps`: accuracy after rotating by θ and
attacking with L∞ PGD at ε). A surface is stored as one curve per value of the second
coordinate, named `<metric>@<value>` (so each cell keeps its per-example outcomes); the chart
gathers the family `<metric>` and `<metric>@*`, averages seeds per cell and labels every cell.
"""

from __future__ import annotations

from typing import Literal

import altair as alt
import numpy as np
import pandas as pd

from raystudy.errors import StudyError

from .aggregate import aggregate
from .chart_base import Chart, ChartData, report_chart
from .charts import FMT, HEIGHT, WIDTH, _nominal_or_ordinal, _title, curve_x_title, prep


def in_family(names: pd.Series, metric: str) -> pd.Series:
    """Which curve names belong to the surface `metric`: itself and `<metric>@<value>`."""
    return (names == metric) | names.str.startswith(metric + "@")


def surface_chart(curves: pd.DataFrame, metric: str, *, y: str = "eps", value: str = "accuracy",
                  column: str | None = None, title: str | None = None, scheme: str = "viridis") -> alt.Chart:
    """Mean of `value` over seeds on the grid (x, `y`) of a curve's rows, cells labelled, one
    panel per value of the config column `column`."""
    rows = curves[in_family(curves["metric"], metric)]
    if rows.empty:
        raise ValueError(f"no curve rows with metric '{metric}'")
    agg = aggregate(rows, [c for c in (column,) if c] + ["x", y], value).dropna(subset=["mean"])
    data, f = prep(agg, [column, "x", y, "mean", "std", "n"])
    x_title = curve_x_title(rows)
    base = alt.Chart(data).encode(
        x=alt.X(f["x"], type="ordinal", title=x_title, axis=alt.Axis(labelAngle=0, format=".3g")),
        y=alt.Y(f[y], type="ordinal", title=y, sort="descending", axis=alt.Axis(format=".3g")))
    tips = [alt.Tooltip(f["x"], title=x_title), alt.Tooltip(f[y], title=y, format=FMT),
            alt.Tooltip("mean", title=f"{value} (mean)", format=FMT), alt.Tooltip("std", format=FMT),
            alt.Tooltip("n", title="seeds")] + ([alt.Tooltip(f[column], title=column)] if column else [])
    rect = base.mark_rect().encode(color=alt.Color("mean", type="quantitative", title=value,
                                                   scale=alt.Scale(scheme=scheme)), tooltip=tips)
    mid = float(np.nanmean([data["mean"].min(), data["mean"].max()])) if len(data) else 0.0
    text = base.mark_text(fontSize=10).encode(
        text=alt.Text("mean", type="quantitative", format=".2f"),
        color=alt.condition(alt.datum.mean > mid, alt.value("black"), alt.value("white")))
    chart = alt.layer(rect, text).properties(width=WIDTH, height=HEIGHT)
    if column:
        chart = chart.facet(column=alt.Column(f[column], type=_nominal_or_ordinal(agg[column]), title=column))
    return chart.properties(title=_title(title or f"{metric}: {value}", f"x: {x_title}; y: {y}; mean over seeds"))


@report_chart
class SurfaceChart(Chart):
    """A curve with a second coordinate column (e.g. spatial_attack.surface: θ × ε) as a heatmap."""
    chart: Literal["surface"]
    metric: str = "spatial_attack.surface"
    y: str = "eps"
    value: str = "accuracy"
    column: str | None = None

    def describe(self) -> str:
        return f"{self.metric} ({self.value} over x × {self.y})"

    def family(self, data: ChartData) -> pd.DataFrame:
        """Rows of every curve of the surface (`metric` and `metric@*`) the selected trials hold."""
        known = data.tables.curves["metric"].dropna() if len(data.tables.curves) else pd.Series([], dtype=str)
        frames = []
        for m in sorted(set(known[in_family(known, self.metric)])):
            try:
                frames.append(data.curves(m, self.value))
            except StudyError:
                continue   # a curve only unselected trials hold
        # None at all: ChartData's error names the known curves and the nearest one.
        return pd.concat(frames, ignore_index=True) if frames else data.curves(self.metric, self.value)

    def build(self, data: ChartData) -> alt.TopLevelMixin:
        curves = self.family(data)
        if self.y not in curves.columns or curves[self.y].isna().all():
            raise StudyError(f"curve '{self.metric}' has no second coordinate column '{self.y}'",
                             path=data.path("y"), expected="a column the curve rows hold besides x, "
                             "e.g. eps for spatial_attack.surface")
        return surface_chart(curves, self.metric, y=self.y, value=self.value, column=self.column,
                             title=self.title)

