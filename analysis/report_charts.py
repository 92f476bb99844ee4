"""The report's built-in charts, one class each (the grammar is in analysis/README.md).

Each class is what a study writes under `report:` (its fields), its heading (`describe`) and
how it draws itself from the tables (`build`, on top of the pure builders in charts.py).
"""

from __future__ import annotations

from typing import Any, Literal

import altair as alt
import pandas as pd
from pydantic import Field, model_validator

from . import charts
from .chart_base import Chart, ChartData, report_chart
from .pareto import attainment, directions

Band = Literal["ci", "std", "none"]
# Profiles also draw the per-point Wilson interval over the evaluated images (charts.profile_chart).
ProfileBand = Literal["auto", "wilson", "ci", "std", "none"]


@report_chart
class LineChart(Chart):
    """Mean of a value over a config axis, with a seed band."""
    chart: Literal["line"]
    x: str
    y: str
    color: str | None = None
    column: str | None = None
    band: Band = "ci"
    log_x: bool = False

    def describe(self) -> str:
        return f"{self.y} vs {self.x}"

    def build(self, data: ChartData) -> alt.TopLevelMixin:
        data.need(self.x, "x")
        return charts.line_chart(data.values([self.y], ["y"]), self.x, self.y, color=self.color,
                                 column=self.column, band=self.band, log_x=self.log_x, title=self.title)


@report_chart
class BarChart(Chart):
    """Mean bars per config value, error bars over seeds, each seed as a dot."""
    chart: Literal["bar"]
    x: str
    y: str
    color: str | None = None
    band: Band = "ci"

    def describe(self) -> str:
        return f"{self.y} by {self.x}"

    def build(self, data: ChartData) -> alt.TopLevelMixin:
        data.need(self.x, "x")
        return charts.bar_chart(data.values([self.y], ["y"]), self.x, self.y, color=self.color, band=self.band,
                                title=self.title)


@report_chart
class ProfileChart(Chart):
    """A curve (robustness vs ε, invariance vs θ, ...) with a Wilson band over the evaluated
    images and/or a seed band."""
    chart: Literal["profile"]
    metric: str
    y: str = "accuracy"
    color: str | None = None
    column: str | None = None
    band: ProfileBand = "auto"

    def describe(self) -> str:
        return f"{self.metric} ({self.y})"

    def build(self, data: ChartData) -> alt.TopLevelMixin:
        return charts.profile_chart(data.curves(self.metric, self.y), self.metric, y=self.y, color=self.color,
                                    column=self.column, band=self.band, title=self.title)


@report_chart
class EpochsChart(Chart):
    """A training-log column per epoch."""
    chart: Literal["epochs"]
    y: str = "val_accuracy"
    color: str | None = None
    column: str | None = None
    band: Band = "ci"

    def describe(self) -> str:
        return f"{self.y} per epoch"

    def build(self, data: ChartData) -> alt.TopLevelMixin:
        return charts.epochs_chart(data.epochs(self.y), self.y, color=self.color, column=self.column,
                                   band=self.band, title=self.title)


@report_chart
class ParetoChart(Chart):
    """Two objectives (plus any in maximize / minimize) with the Pareto front, points labelled."""
    chart: Literal["pareto"]
    x: str
    y: str
    maximize: list[str] = Field(default_factory=list)
    minimize: list[str] = Field(default_factory=list)
    color: str | None = None
    label: str = "label"

    @model_validator(mode="after")
    def _dirs(self):
        both = set(self.maximize) & set(self.minimize)
        if both:
            raise ValueError(f"{sorted(both)} listed under both maximize and minimize")
        return self

    def describe(self) -> str:
        return f"{self.y} vs {self.x}"

    def objectives(self) -> dict[str, str]:
        return directions([self.x, self.y], self.maximize, self.minimize)

    def build(self, data: ChartData) -> alt.TopLevelMixin:
        data.need(self.label, "label")
        objs = list(self.objectives())
        df = data.values(objs, ["x", "y"] + [f"maximize/minimize.{o}" for o in objs[2:]])
        return charts.pareto_chart(df, self.x, self.y, maximize=self.maximize, minimize=self.minimize,
                                   color=self.color, label=self.label, title=self.title)

    def csv_tables(self, data: ChartData) -> dict[str, tuple[str, pd.DataFrame]]:
        dirs = self.objectives()
        df = data.values(list(dirs))
        att = attainment(df[["trial_id", self.label, *dirs]], dirs).sort_values(["rank", "distance"], kind="stable")
        return {"pareto": (f"Pareto attainment (chart {data.index + 1}): {', '.join(dirs)}", att)}


@report_chart
class HeatmapChart(Chart):
    """Mean of a value on a grid of two config axes, cells labelled."""
    chart: Literal["heatmap"]
    x: str
    y: str
    value: str

    def describe(self) -> str:
        return f"{self.value} over {self.x} × {self.y}"

    def build(self, data: ChartData) -> alt.TopLevelMixin:
        data.need(self.x, "x")
        data.need(self.y, "y")
        return charts.heatmap_chart(data.values([self.value], ["value"]), self.x, self.y, self.value,
                                    title=self.title)


@report_chart
class DensityChart(Chart):
    """Hessian eigenvalue density, one line per trial."""
    chart: Literal["density"]
    metric: str = "hessian.density"
    y: str = "density"
    color: str | None = None
    column: str | None = None
    log_y: bool = True

    def describe(self) -> str:
        return self.metric

    def build(self, data: ChartData) -> alt.TopLevelMixin:
        return charts.density_chart(data.curves(self.metric, self.y), self.metric, y=self.y, color=self.color,
                                    column=self.column, log_y=self.log_y, title=self.title)


@report_chart
class TransferChart(Chart):
    """Transfer-attack matrix from the table the `after: transfer` step writes."""
    chart: Literal["transfer"]
    table: str = "transfer"
    source: str = "source_trial"
    target: str = "target_trial"
    value: str = "accuracy"
    # Rows of the table to use, e.g. {attack: pgd, eps: 0.1}; an unselected attack / eps column
    # with several values is restricted to its first value (named in the title).
    select: dict[str, Any] = Field(default_factory=dict)

    def describe(self) -> str:
        return f"{self.value} of transferred attacks"

    def build(self, data: ChartData) -> alt.TopLevelMixin:
        df = data.extra(self.table, "table", {k: getattr(self, k) for k in ("source", "target", "value")},
                        hint="the transfer step writes it after all trials finish")
        data.extra(self.table, "table", {f"select.{k}": k for k in self.select})
        for k, v in self.select.items():
            df = df[df[k].isin(v if isinstance(v, list) else [v])]
        picked = []
        for k in ("attack", "eps"):
            if k in df.columns and k not in self.select and df[k].nunique() > 1:
                first = df[k].iloc[0]
                df = df[df[k] == first]
                picked.append(f"{k}={first:g}" if isinstance(first, float) else f"{k}={first}")
        df = df.copy()
        # Trial ids are unreadable in a matrix: show the configuration label, plus the seed so that
        # white-box cells (a model attacking itself) are never pooled with other seeds' transfers.
        tr = data.tables.trials.set_index("trial_id")
        labels = {tid: (f"{r['label']}, seed={r['seed']}" if "seed" in tr.columns else r["label"])
                  for tid, r in tr.iterrows()}
        for k in (self.source, self.target):
            df[k] = df[k].map(lambda v: labels.get(v, v))
        title = self.title or (f"transfer attacks: {self.value}" + (f" ({', '.join(picked)})" if picked else ""))
        return charts.transfer_chart(df, source=self.source, target=self.target, value=self.value, title=title)


@report_chart
class TableChart(Chart):
    """Any table of values per row (label), mean ± std over seeds."""
    chart: Literal["table"]
    rows: str = "label"
    columns: dict[str, str]

    def describe(self) -> str:
        return ", ".join(self.columns)

    def table(self, data: ChartData) -> pd.DataFrame:
        data.need(self.rows, "rows")
        return data.values(list(self.columns.values()), [f"columns.{k}" for k in self.columns])

    def build(self, data: ChartData) -> alt.TopLevelMixin:
        return charts.table_chart(self.table(data), self.rows, self.columns, title=self.title)


@report_chart
class CuspTableChart(TableChart):
    """The CuSP table: natural, spatial (rotations in ±180°) and PGD 8/255 accuracy per model."""
    chart: Literal["cusp_table"]
    columns: dict[str, str] = Field(default_factory=lambda: dict(charts.CUSP_COLUMNS))

    def build(self, data: ChartData) -> alt.TopLevelMixin:
        return charts.cusp_table_chart(self.table(data), self.rows, self.columns, title=self.title)


from . import surface_chart  # noqa: E402,F401 - registers the `surface` chart (its own file)
# Charts in files of their own (imported here so that loading this module registers them).
from . import corruption_chart  # noqa: E402,F401
