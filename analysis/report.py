"""`raystudy report DIR`: the study's declared charts as an offline HTML page, PNG/SVG files
and the key tables. The grammar of the `report:` section is documented in analysis/README.md.
"""

from __future__ import annotations

import html
import json
import sys
from functools import cache
from pathlib import Path
from typing import Any, Literal

import altair as alt
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from raystudy.errors import StudyError, StudyErrors, pydantic_errors, suggest
from raystudy.registry import SECTIONS

from . import charts
from .aggregate import aggregate
from .load import Tables, load, split_ref
from .pareto import attainment, directions

VL_VERSION = ".".join(alt.SCHEMA_VERSION.lstrip("v").split(".")[:2])
Band = Literal["ci", "std", "none"]


# ------------------------------------------------------------------------------ grammar

class Entry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    chart: str
    title: str | None = None
    # Keep only trials whose config matches: {train.method.name: pgd_at, seed: [0, 1]}.
    where: dict[str, Any] = Field(default_factory=dict)


class LineEntry(Entry):
    chart: Literal["line"]
    x: str
    y: str
    color: str | None = None
    column: str | None = None
    band: Band = "ci"
    log_x: bool = False


class BarEntry(Entry):
    chart: Literal["bar"]
    x: str
    y: str
    color: str | None = None
    band: Band = "ci"


class ProfileEntry(Entry):
    chart: Literal["profile"]
    metric: str
    y: str = "accuracy"
    color: str | None = None
    column: str | None = None
    band: Band = "ci"


class EpochsEntry(Entry):
    chart: Literal["epochs"]
    y: str = "val_accuracy"
    color: str | None = None
    column: str | None = None
    band: Band = "ci"


class ParetoEntry(Entry):
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


class HeatmapEntry(Entry):
    chart: Literal["heatmap"]
    x: str
    y: str
    value: str


class DensityEntry(Entry):
    chart: Literal["density"]
    metric: str = "hessian.density"
    y: str = "density"
    color: str | None = None
    column: str | None = None
    log_y: bool = True


class TransferEntry(Entry):
    chart: Literal["transfer"]
    table: str = "transfer"
    source: str = "source_trial"
    target: str = "target_trial"
    value: str = "accuracy"
    # Rows of the table to use, e.g. {attack: pgd, eps: 0.1}; an unselected attack / eps column
    # with several values is restricted to its first value (named in the title).
    select: dict[str, Any] = Field(default_factory=dict)


class TableEntry(Entry):
    chart: Literal["table"]
    rows: str = "label"
    columns: dict[str, str]


class CuspTableEntry(Entry):
    chart: Literal["cusp_table"]
    rows: str = "label"
    columns: dict[str, str] = Field(default_factory=lambda: dict(charts.CUSP_COLUMNS))


CHARTS: dict[str, type[Entry]] = {
    "line": LineEntry, "bar": BarEntry, "profile": ProfileEntry, "epochs": EpochsEntry,
    "pareto": ParetoEntry, "heatmap": HeatmapEntry, "density": DensityEntry,
    "transfer": TransferEntry, "table": TableEntry, "cusp_table": CuspTableEntry,
}


def _parse(entry: Any, i: int) -> tuple[Entry | None, list[StudyError]]:
    where = f"report.{i}"
    if not isinstance(entry, dict):
        return None, [StudyError("a report entry must be a mapping such as {chart: line, x: ..., y: ...}",
                                 path=where, expected="a mapping")]
    kind = entry.get("chart")
    if kind is None:
        return None, [StudyError("missing 'chart'", path=f"{where}.chart",
                                 expected="one of: " + ", ".join(CHARTS), hint="add e.g. chart: line")]
    if kind not in CHARTS:
        best = suggest(str(kind), CHARTS)
        return None, [StudyError(f"unknown chart type '{kind}'", path=f"{where}.chart",
                                 expected="one of: " + ", ".join(CHARTS),
                                 hint=f"did you mean '{best}'?" if best else None)]
    model = CHARTS[kind]
    try:
        return model.model_validate(entry), []
    except ValidationError as e:
        return None, pydantic_errors(e, model, file=None, prefix=where)


@SECTIONS.register("report")
def validate_report(entries: Any) -> list[StudyError]:
    """Errors of a study's `report:` section (empty list: valid). Paths read report.<i>.<key>."""
    if entries is None:
        return []
    if not isinstance(entries, list):
        return [StudyError("'report' must be a list of chart entries", path="report", expected="a list")]
    errs: list[StudyError] = []
    for i, e in enumerate(entries):
        errs += _parse(e, i)[1]
    return errs


def parse_report(entries: list) -> list[Entry]:
    errs = validate_report(entries)
    if errs:
        raise errs[0] if len(errs) == 1 else StudyErrors(errs)
    return [_parse(e, i)[0] for i, e in enumerate(entries)]


# ------------------------------------------------------------------------- data -> chart

def default_report(tables: Tables) -> list[dict]:
    """Charts for a study that declares none: what its tables hold."""
    varied = [k for k in tables.varied if k != "seed"]
    first = varied[0] if varied else None
    out: list[dict] = []
    if "accuracy" in tables.trials.columns and first:
        out.append({"chart": "bar", "x": first, "y": "accuracy", **({"color": varied[1]} if len(varied) > 1 else {})})
    for m in sorted(tables.curves["metric"].dropna().unique()) if "metric" in tables.curves.columns else []:
        if m.endswith("density"):
            out.append({"chart": "density", "metric": m, **({"color": first} if first else {})})
        else:
            out.append({"chart": "profile", "metric": m, **({"color": first} if first else {})})
    if "val_accuracy" in tables.epochs.columns:
        out.append({"chart": "epochs", "y": "val_accuracy", **({"color": first} if first else {})})
    return out


def describe(e: Entry) -> str:
    """A heading for an entry without a title, e.g. 'bar: accuracy by train.augment.rotation'."""
    what = {
        LineEntry: lambda: f"{e.y} vs {e.x}", BarEntry: lambda: f"{e.y} by {e.x}",
        ProfileEntry: lambda: f"{e.metric} ({e.y})", EpochsEntry: lambda: f"{e.y} per epoch",
        ParetoEntry: lambda: f"{e.y} vs {e.x}", HeatmapEntry: lambda: f"{e.value} over {e.x} × {e.y}",
        DensityEntry: lambda: e.metric, TransferEntry: lambda: f"{e.value} of transferred attacks",
        TableEntry: lambda: ", ".join(e.columns), CuspTableEntry: lambda: ", ".join(e.columns),
    }[type(e)]()
    extra = f" (color: {e.color})" if getattr(e, "color", None) else ""
    return f"{e.chart}: {what}{extra}"


def _where(tables: Tables, where: dict, i: int) -> pd.DataFrame:
    for col in where:
        _need(tables, col, f"report.{i}.where")   # may add a column: before the first filter copies
    df = tables.trials
    for col, val in where.items():
        vals = val if isinstance(val, list) else [val]
        df = df[df[col].isin(vals)]
    return df


def _need(tables: Tables, col: str | None, path: str) -> None:
    if col and col not in tables.trials.columns and not tables.add_config_column(col):
        known = [c for c in tables.trials.columns if c not in ("error",)]
        best = suggest(col, known)
        raise StudyError(f"no column '{col}' in trials.parquet", path=path,
                         expected="a config column such as " + ", ".join(tables.config_columns[:8]),
                         hint=f"did you mean '{best}'?" if best else None)


def _trials_with(tables: Tables, trials: pd.DataFrame, refs: list[str], paths: list[str] | None = None) -> pd.DataFrame:
    """Completed trials of `trials` with value references resolved to columns."""
    vals = tables.values(refs, paths=paths)
    return vals[vals["trial_id"].isin(trials["trial_id"])]


def build_chart(tables: Tables, entry: Entry | dict, i: int = 0) -> alt.TopLevelMixin:
    """The Altair chart of one report entry (raises StudyError when its data are missing)."""
    if isinstance(entry, dict):
        entry = parse_report([entry])[0]
    p = f"report.{i}"
    trials = _where(tables, entry.where, i)
    for key in ("color", "column"):
        _need(tables, getattr(entry, key, None), f"{p}.{key}")
    if not len(tables.completed):
        raise StudyError("no completed trials yet", path=p, hint="run the study (or wait for it)")
    e = entry
    if isinstance(e, (LineEntry, BarEntry)):
        _need(tables, e.x, f"{p}.x")
        df = _trials_with(tables, trials, [e.y], [f"{p}.y"])
        if isinstance(e, LineEntry):
            return charts.line_chart(df, e.x, e.y, color=e.color, column=e.column, band=e.band, log_x=e.log_x,
                                     title=e.title)
        return charts.bar_chart(df, e.x, e.y, color=e.color, band=e.band, title=e.title)
    if isinstance(e, HeatmapEntry):
        _need(tables, e.x, f"{p}.x")
        _need(tables, e.y, f"{p}.y")
        return charts.heatmap_chart(_trials_with(tables, trials, [e.value], [f"{p}.value"]), e.x, e.y, e.value, title=e.title)
    if isinstance(e, (ProfileEntry, DensityEntry)):
        cur = tables.curves_with_config()
        cur = cur[cur["trial_id"].isin(trials["trial_id"]) & (cur["metric"] == e.metric)]
        if cur.empty:
            known = sorted(tables.curves["metric"].dropna().unique()) if len(tables.curves) else []
            best = suggest(e.metric, known)
            raise StudyError(f"no curve rows with metric '{e.metric}'", path=f"{p}.metric",
                             expected="one of: " + ", ".join(known) if known else "a curve metric",
                             hint=f"did you mean '{best}'?" if best else "has a trial that measures it finished?")
        if e.y not in cur.columns:
            raise StudyError(f"curve '{e.metric}' has no value column '{e.y}'", path=f"{p}.y")
        if isinstance(e, ProfileEntry):
            return charts.profile_chart(cur, e.metric, y=e.y, color=e.color, column=e.column, band=e.band,
                                        title=e.title)
        return charts.density_chart(cur, e.metric, y=e.y, color=e.color, column=e.column, log_y=e.log_y,
                                    title=e.title)
    if isinstance(e, EpochsEntry):
        ep = tables.epochs_with_config()
        ep = ep[ep["trial_id"].isin(trials["trial_id"])]
        if e.y not in ep.columns:
            cols = [c for c in tables.epochs.columns if c not in ("trial_id", "epoch")]
            best = suggest(e.y, cols)
            raise StudyError(f"no column '{e.y}' in epochs.parquet", path=f"{p}.y",
                             expected="one of: " + ", ".join(cols), hint=f"did you mean '{best}'?" if best else None)
        return charts.epochs_chart(ep, e.y, color=e.color, column=e.column, band=e.band, title=e.title)
    if isinstance(e, ParetoEntry):
        _need(tables, e.label, f"{p}.label")
        objs = list(directions([e.x, e.y], e.maximize, e.minimize))
        df = _trials_with(tables, trials, objs, [f"{p}.{k}" for k in ("x", "y")] +
                          [f"{p}.maximize/minimize.{o}" for o in objs[2:]])
        return charts.pareto_chart(df, e.x, e.y, maximize=e.maximize, minimize=e.minimize, color=e.color,
                                   label=e.label, title=e.title)
    if isinstance(e, (TableEntry, CuspTableEntry)):
        _need(tables, e.rows, f"{p}.rows")
        df = _trials_with(tables, trials, list(e.columns.values()), [f"{p}.columns.{k}" for k in e.columns])
        fn = charts.cusp_table_chart if isinstance(e, CuspTableEntry) else charts.table_chart
        return fn(df, e.rows, e.columns, title=e.title)
    if isinstance(e, TransferEntry):
        if e.table not in tables.extra:
            raise StudyError(f"no table '{e.table}.parquet' in {tables.path}", path=f"{p}.table",
                             expected="one of: " + (", ".join(tables.extra) or "(no extra tables)"),
                             hint="the transfer step writes it after all trials finish")
        df = tables.extra[e.table]
        for k in ("source", "target", "value"):
            if getattr(e, k) not in df.columns:
                raise StudyError(f"no column '{getattr(e, k)}' in {e.table}.parquet", path=f"{p}.{k}",
                                 expected="one of: " + ", ".join(df.columns))
        for k, v in e.select.items():
            if k not in df.columns:
                raise StudyError(f"no column '{k}' in {e.table}.parquet", path=f"{p}.select.{k}",
                                 expected="one of: " + ", ".join(df.columns))
            df = df[df[k].isin(v if isinstance(v, list) else [v])]
        picked = []
        for k in ("attack", "eps"):
            if k in df.columns and k not in e.select and df[k].nunique() > 1:
                first = df[k].iloc[0]
                df = df[df[k] == first]
                picked.append(f"{k}={first:g}" if isinstance(first, float) else f"{k}={first}")
        df = df.copy()
        # Trial ids are unreadable in a matrix: show the configuration label, plus the seed so that
        # white-box cells (a model attacking itself) are never pooled with other seeds' transfers.
        tr = tables.trials.set_index("trial_id")
        labels = {tid: (f"{r['label']}, seed={r['seed']}" if "seed" in tr.columns else r["label"])
                  for tid, r in tr.iterrows()}
        for k in (e.source, e.target):
            df[k] = df[k].map(lambda v: labels.get(v, v))
        title = e.title or (f"transfer attacks: {e.value}" + (f" ({', '.join(picked)})" if picked else ""))
        return charts.transfer_chart(df, source=e.source, target=e.target, value=e.value, title=title)
    raise AssertionError(f"unhandled chart {e.chart}")  # pragma: no cover - CHARTS lists every class


# ---------------------------------------------------------------------------------- tables

def summary_table(tables: Tables, max_metrics: int | None = None) -> pd.DataFrame:
    """Per configuration (seeds pooled): n and 'mean ± std' of the main scalar metrics."""
    done = tables.completed
    metrics = [m for m in tables.metric_columns if not m.startswith("time.") and not
               (m.endswith("_s") and m != "wall_time_s") and m != "num_params"]
    metrics = metrics[:max_metrics] if max_metrics else metrics
    if done.empty or not metrics:
        return pd.DataFrame()
    agg = aggregate(done, "label", metrics)
    agg["cell"] = [("—" if pd.isna(m) else f"{m:.4g}" + ("" if pd.isna(s) else f" ± {s:.2g}"))
                   for m, s in zip(agg["mean"], agg["std"])]
    wide = agg.pivot_table(index="label", columns="value", values="cell", aggfunc="first", sort=False)
    wide = wide[[m for m in metrics if m in wide.columns]]
    seeds = done.groupby("label", sort=False).size().rename("trials")
    return wide.join(seeds).reset_index()[["label", "trials", *wide.columns]]


def status_table(tables: Tables) -> pd.DataFrame:
    bad = tables.trials[~tables.trials["status"].isin(["completed"])]
    return bad[[c for c in ("trial_id", "label", "status", "error") if c in bad.columns]]


# ------------------------------------------------------------------------------------ page

@cache
def javascript_bundle() -> str:
    """vega + vega-lite + vega-embed in one script, so the page needs no network."""
    import vl_convert
    return vl_convert.javascript_bundle(vl_version=VL_VERSION)


def _script_json(obj: Any) -> str:
    return json.dumps(obj, default=str).replace("</", "<\\/")


CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}
h1{margin-bottom:.2em} .desc{color:#555} .chart{margin:1em 0 2.5em} .missing{background:#fff4e5;
border:1px solid #f0b66b;padding:.8em;border-radius:4px} table{border-collapse:collapse;font-size:13px;margin:1em 0}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:right} th{background:#f4f4f4} td:first-child{text-align:left}
.files{font-size:13px;color:#555}"""


def _html_table(df: pd.DataFrame) -> str:
    if df.empty:
        return "<p><em>none</em></p>"
    return df.to_html(index=False, escape=True, na_rep="", border=0)


def build_report(results_dir: Path, out: Path | None = None, png: bool = True) -> Path:
    """Write report.html (+ report/ with one PNG and SVG per chart and CSV tables); returns the HTML path."""
    tables = load(results_dir)
    entries = parse_report(tables.report or default_report(tables))
    out = Path(out) if out else Path(results_dir) / "report.html"
    assets = out.parent / out.stem
    assets.mkdir(parents=True, exist_ok=True)
    sections, specs, problems = [], {}, []
    for i, e in enumerate(entries):
        cid = f"chart-{i + 1}"
        head = f"<h2>{i + 1}. {html.escape(e.title or describe(e))}</h2>"
        try:
            spec = build_chart(tables, e, i).to_dict()
        except (StudyError, KeyError, ValueError) as err:
            msg = err.render() if isinstance(err, StudyError) else f"report.{i}: {err}"
            problems.append(msg)
            sections.append(f'{head}<div id="{cid}" class="chart missing" data-chart="{e.chart}" '
                            f'data-missing="1">Not drawn: {html.escape(msg)}</div>')
            continue
        specs[cid] = spec
        files = ""
        if png:
            import vl_convert
            stem = f"{i + 1:02d}-{e.chart}"
            (assets / f"{stem}.png").write_bytes(vl_convert.vegalite_to_png(spec, vl_version=VL_VERSION, scale=2))
            (assets / f"{stem}.svg").write_text(vl_convert.vegalite_to_svg(spec, vl_version=VL_VERSION))
            rel = f"{assets.name}/{stem}"
            files = f'<div class="files"><a href="{rel}.png">PNG</a> · <a href="{rel}.svg">SVG</a></div>'
        sections.append(f'{head}<div id="{cid}" class="chart" data-chart="{e.chart}"></div>{files}')
    summary = summary_table(tables)
    status = status_table(tables)
    summary.to_csv(assets / "summary.csv", index=False)
    tables.completed.drop(columns=["error"], errors="ignore").to_csv(assets / "trials.csv", index=False)
    pareto_html = ""
    for i, e in enumerate(entries):
        if isinstance(e, ParetoEntry):
            try:
                objs = list(directions([e.x, e.y], e.maximize, e.minimize))
                df = _trials_with(tables, _where(tables, e.where, i), objs)
                att = attainment(df[["trial_id", e.label, *objs]], directions([e.x, e.y], e.maximize, e.minimize))
            except (StudyError, KeyError, ValueError):
                continue
            att = att.sort_values(["rank", "distance"], kind="stable")
            att.to_csv(assets / f"pareto-{i + 1:02d}.csv", index=False)
            pareto_html += f"<h3>Pareto attainment (chart {i + 1}): {html.escape(', '.join(objs))}</h3>" + \
                _html_table(att.round(4))
    counts = tables.counts()
    total = len(tables.trials)
    state = ", ".join(f"{v} {k}" for k, v in counts.items())
    desc = html.escape(str(tables.plan.get("description") or "").strip())
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>raystudy report: {html.escape(tables.name)}</title>
<style>{CSS}</style>
<script>{javascript_bundle()}</script></head>
<body>
<h1>Study <code>{html.escape(tables.name)}</code></h1>
<p class="desc">{desc}</p>
<p id="status">{total} trials: {html.escape(state)}. Results: <code>{html.escape(str(tables.path))}</code></p>
{''.join(sections)}
<h2>Summary per configuration</h2>
<p class="desc">mean ± std over seeds; full table in {assets.name}/summary.csv</p>
{_html_table(summary)}
{pareto_html}
<h2>Trials not completed</h2>
{_html_table(status)}
<script>
const SPECS = {_script_json(specs)};
const OPTS = {{renderer: "svg", actions: {{export: true, source: false, compiled: false, editor: false}}}};
for (const [id, spec] of Object.entries(SPECS)) {{
  const el = document.getElementById(id);
  vegaEmbed(el, spec, OPTS)
    .then(() => {{ el.dataset.rendered = "1"; }})
    .catch(err => {{ el.dataset.rendered = "error"; console.error("chart " + id + ": " + err); }});
}}
</script>
</body></html>
"""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page)
    for msg in problems:
        print(f"warning: {msg}", file=sys.stderr)
    return out


__all__ = ["build_report", "build_chart", "validate_report", "parse_report", "default_report", "CHARTS",
           "summary_table", "split_ref"]
