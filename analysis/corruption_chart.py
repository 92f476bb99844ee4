"""The `corruption` report chart: accuracy (or consistency) under common corruptions by
severity, as the `corruption` metric records it (curves `corruption.<name>` and
`corruption.mean`, x = severity 0..5): one panel per corruption, the mean last, seeds
averaged, coloured by a config column (Hendrycks & Dietterich 2019's per-corruption plots).
"""

from __future__ import annotations

from typing import Literal

import altair as alt
from pydantic import Field

from raystudy.errors import StudyError, suggest

from . import charts
from .aggregate import aggregate
from .chart_base import Chart, ChartData, report_chart


@report_chart
class CorruptionChart(Chart):
    """Per-corruption severity profiles; `corruptions` picks and orders the panels (default:
    every corruption recorded, then `mean`)."""
    chart: Literal["corruption"]
    y: Literal["accuracy", "consistency"] = "accuracy"
    color: str | None = None
    corruptions: list[str] | None = None
    columns: int = Field(4, ge=1, description="panels per row")

    def describe(self) -> str:
        return f"{self.y} under common corruptions by severity"

    def _rows(self, data: ChartData):
        cur = data.tables.curves_with_config()
        cur = cur[cur["trial_id"].isin(data.trials["trial_id"]) & cur["metric"].str.startswith("corruption.")]
        cur = cur[~cur["metric"].str.endswith("@epoch")]
        if cur.empty:
            raise StudyError("no curve rows of the corruption metric", path=data.path(),
                             hint="measure it: add '- corruption' under evaluate:")
        cur = cur.assign(corruption=cur["metric"].str.removeprefix("corruption."))
        have = list(dict.fromkeys(n for n in cur["corruption"] if n != "mean"))
        have += ["mean"] if "mean" in set(cur["corruption"]) else []
        names = self.corruptions or have
        for i, n in enumerate(names):
            if n not in have:
                best = suggest(n, have)
                raise StudyError(f"no corruption '{n}' in curves.parquet", path=data.path(f"corruptions.{i}"),
                                 expected="one of: " + ", ".join(have),
                                 hint=f"did you mean '{best}'?" if best else None)
        return cur[cur["corruption"].isin(names)], names

    def build(self, data: ChartData) -> alt.TopLevelMixin:
        cur, names = self._rows(data)
        by = [c for c in (self.color,) if c] + ["corruption", "x"]
        agg = aggregate(cur, by, self.y).dropna(subset=["mean"])
        df, f = charts.prep(agg, [*by, "mean", "std", "n"])
        color = alt.Color(f[self.color], type="nominal", title=self.color,
                          scale=alt.Scale(scheme="tableau10")) if self.color else alt.Undefined
        tips = [alt.Tooltip(f[c], title=c) for c in by] + [
            alt.Tooltip("mean", title=f"{self.y} (mean)", format=charts.FMT), alt.Tooltip("std", format=charts.FMT),
            alt.Tooltip("n", title="seeds")]
        line = alt.Chart(df).mark_line(point=True).encode(
            x=alt.X("x", type="quantitative", title="severity", scale=alt.Scale(domain=[0, 5])),
            y=alt.Y("mean", type="quantitative", title=self.y, scale=alt.Scale(zero=False)),
            color=color, tooltip=tips).properties(width=180, height=140)
        return line.facet(facet=alt.Facet(f["corruption"], type="nominal", sort=names, title=None),
                          columns=self.columns).properties(
            title=alt.Title(self.title or f"common corruptions: {self.y}", subtitle="mean over seeds"))
