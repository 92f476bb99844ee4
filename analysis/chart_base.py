"""The base of every report chart and what a chart reads.

A report chart is one pydantic class: its fields are the keys a study writes under `report:`,
`chart: Literal["name"]` selects it, `describe()` gives its heading and `build(data)` draws it.
`@report_chart` registers the class in `raystudy.registry.CHARTS` (the registry entry's object
and schema are the class itself), so a new chart is one class in one file:

    @report_chart
    class Scatter(Chart):
        chart: Literal["scatter"]
        x: str
        y: str

        def describe(self) -> str:
            return f"{self.y} vs {self.x}"

        def build(self, data: ChartData) -> alt.TopLevelMixin:
            df, f = charts.prep(data.values([self.x, self.y], ["x", "y"]), [self.x, self.y])
            return alt.Chart(df).mark_point().encode(x=alt.X(f[self.x], type="quantitative", title=self.x),
                                                     y=alt.Y(f[self.y], type="quantitative", title=self.y))
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, get_args

import pandas as pd
from pydantic import ConfigDict, Field

from raystudy.errors import StudyError, suggest
from raystudy.registry import CHARTS, Options

from .health import healthy_only
from .load import Tables

if TYPE_CHECKING:  # altair is imported by the chart modules; the base needs it for hints only
    import altair as alt


class Chart(Options):
    """Keys every chart takes: `title:`, `where:` (keep the trials whose config matches,
    e.g. {train.method.name: pgd_at, seed: [0, 1]}) and `healthy_only:` (leave out the trials
    judged unhealthy, `health.ok` false; trials never judged stay)."""

    model_config = ConfigDict(extra="forbid")
    chart: str
    title: str | None = None
    where: dict[str, Any] = Field(default_factory=dict)
    healthy_only: bool = False

    def describe(self) -> str:
        """What the chart shows, for a heading when the entry has no title."""
        return self.chart

    def heading(self) -> str:
        """e.g. 'bar: accuracy by train.augment.rotation (color: train.method.name)'."""
        color = getattr(self, "color", None)
        return f"{self.chart}: {self.describe()}" + (f" (color: {color})" if color else "")

    def build(self, data: "ChartData") -> "alt.TopLevelMixin":
        raise NotImplementedError(f"chart '{self.chart}' has no build()")

    def csv_tables(self, data: "ChartData") -> dict[str, tuple[str, pd.DataFrame]]:
        """Tables the report writes beside the chart: {file stem: (heading, table)}; the page
        shows them after the summary and saves <stem>-<NN>.csv."""
        return {}


def chart_name(cls: type[Chart]) -> str:
    """The `chart:` value a class answers to (its Literal annotation)."""
    names = get_args(cls.model_fields["chart"].annotation)
    if len(names) != 1 or not isinstance(names[0], str):
        raise TypeError(f"{cls.__name__}.chart must be annotated Literal['<name>']")
    return names[0]


def report_chart(cls: type[Chart]) -> type[Chart]:
    """Class decorator: register a Chart subclass under its `chart:` name."""
    return CHARTS.register(chart_name(cls), cls)(cls)


class ChartData:
    """One results folder as one report entry sees it: `trials` are those its `where:` keeps,
    and every check raises a StudyError located at report.<i>.<key>. An entry's `color` and
    `column` keys, when it has them, must name config columns."""

    def __init__(self, tables: Tables, entry: Chart, index: int = 0):
        self.tables = tables
        self.entry = entry
        self.index = index
        self.prefix = f"report.{index}"
        for col in entry.where:
            self.need(col, "where")   # may add a column: before the first filter copies
        df = tables.trials
        for col, val in entry.where.items():
            df = df[df[col].isin(val if isinstance(val, list) else [val])]
        self.trials = healthy_only(df) if entry.healthy_only else df
        for key in ("color", "column"):
            self.need(getattr(entry, key, None), key)

    def path(self, key: str | None = None) -> str:
        return f"{self.prefix}.{key}" if key else self.prefix

    def need(self, col: str | None, key: str) -> None:
        """A config column of trials.parquet (or a fixed config value, added as a column)."""
        t = self.tables
        if col and col not in t.trials.columns and not t.add_config_column(col):
            known = [c for c in t.trials.columns if c not in ("error",)]
            best = suggest(col, known)
            raise StudyError(f"no column '{col}' in trials.parquet", path=self.path(key),
                             expected="a config column such as " + ", ".join(t.config_columns[:8]),
                             hint=f"did you mean '{best}'?" if best else None)

    def values(self, refs: list[str], keys: list[str] | None = None) -> pd.DataFrame:
        """Completed trials kept by `where:`, one column per value reference (a trials column or
        metric@x); `keys` name the entry's key of each reference for errors."""
        paths = [self.path(k) for k in keys] if keys is not None else None
        vals = self.tables.values(refs, paths=paths)
        return vals[vals["trial_id"].isin(self.trials["trial_id"])]

    def curves(self, metric: str, y: str) -> pd.DataFrame:
        """Curve rows of `metric` joined with config, with a value column `y`."""
        t = self.tables
        cur = t.curves_with_config()
        cur = cur[cur["trial_id"].isin(self.trials["trial_id"]) & (cur["metric"] == metric)]
        if cur.empty:
            known = sorted(t.curves["metric"].dropna().unique()) if len(t.curves) else []
            best = suggest(metric, known)
            raise StudyError(f"no curve rows with metric '{metric}'", path=self.path("metric"),
                             expected="one of: " + ", ".join(known) if known else "a curve metric",
                             hint=f"did you mean '{best}'?" if best else "has a trial that measures it finished?")
        if y not in cur.columns:
            raise StudyError(f"curve '{metric}' has no value column '{y}'", path=self.path("y"))
        return cur

    def epochs(self, y: str) -> pd.DataFrame:
        """Training-log rows joined with config, with a column `y`."""
        ep = self.tables.epochs_with_config()
        ep = ep[ep["trial_id"].isin(self.trials["trial_id"])]
        if y not in ep.columns:
            cols = [c for c in self.tables.epochs.columns if c not in ("trial_id", "epoch")]
            best = suggest(y, cols)
            raise StudyError(f"no column '{y}' in epochs.parquet", path=self.path("y"),
                             expected="one of: " + ", ".join(cols), hint=f"did you mean '{best}'?" if best else None)
        return ep

    def extra(self, name: str, key: str, columns: dict[str, str], hint: str | None = None) -> pd.DataFrame:
        """The extra table `<name>.parquet`, checked to hold `columns` ({entry key: column})."""
        t = self.tables
        if name not in t.extra:
            raise StudyError(f"no table '{name}.parquet' in {t.path}", path=self.path(key),
                             expected="one of: " + (", ".join(t.extra) or "(no extra tables)"),
                             hint=hint)
        df = t.extra[name]
        for k, col in columns.items():
            if col not in df.columns:
                raise StudyError(f"no column '{col}' in {name}.parquet", path=self.path(k),
                                 expected="one of: " + ", ".join(df.columns))
        return df
