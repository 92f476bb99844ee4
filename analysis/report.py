"""`raystudy report DIR`: the study's declared charts as an offline HTML page, PNG/SVG files
and the key tables. The grammar of the `report:` section is documented in analysis/README.md;
each chart type is one class (analysis/report_charts.py, base in analysis/chart_base.py)
registered in `raystudy.registry.CHARTS`.
"""

from __future__ import annotations

import html
import json
import sys
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Union

import altair as alt
import pandas as pd
from pydantic import Field, TypeAdapter, ValidationError

from raystudy.errors import StudyError, StudyErrors, pydantic_errors, suggest
from raystudy.registry import CHARTS, SECTIONS

from . import report_charts  # noqa: F401 - registers the built-in charts
from .aggregate import aggregate
from .chart_base import Chart, ChartData, report_chart
from .health import (CSS as HEALTH_CSS, has_health, health_html, health_table, judge_tables, left_out_note,
                     unhealthy_mask)
from .load import Tables, load, split_ref

VL_VERSION = ".".join(alt.SCHEMA_VERSION.lstrip("v").split(".")[:2])


# ------------------------------------------------------------------------------ grammar

@cache
def _union(classes: tuple[type[Chart], ...]) -> TypeAdapter:
    """The registered chart classes as one pydantic union that `chart:` selects from (rebuilt
    when a chart is registered later, e.g. by a plug-in or a test)."""
    return TypeAdapter(Annotated[Union[classes], Field(discriminator="chart")])


def _errors(entry: Any, err: ValidationError, where: str, names: list[str]) -> list[StudyError]:
    """An invalid entry's errors, located at report.<i>.<key>."""
    if not isinstance(entry, dict):
        return [StudyError("a report entry must be a mapping such as {chart: line, x: ..., y: ...}",
                           path=where, expected="a mapping")]
    kind = entry.get("chart")
    if kind is None:
        return [StudyError("missing 'chart'", path=f"{where}.chart",
                           expected="one of: " + ", ".join(names), hint="add e.g. chart: line")]
    if kind not in names:
        best = suggest(str(kind), names)
        return [StudyError(f"unknown chart type '{kind}'", path=f"{where}.chart",
                           expected="one of: " + ", ".join(names), hint=f"did you mean '{best}'?" if best else None)]
    # The union locates errors under the tag (line.colour); the selected class alone gives the
    # plain key paths and the valid keys for did-you-mean hints.
    model = CHARTS.get(kind).obj
    try:
        model.model_validate(entry)
    except ValidationError as e:
        return pydantic_errors(e, model, file=None, prefix=where)
    return pydantic_errors(err, model, file=None, prefix=where)  # pragma: no cover - union and class agree


def _parse(entry: Any, i: int) -> tuple[Chart | None, list[StudyError]]:
    names = CHARTS.names()
    try:
        return _union(tuple(CHARTS.get(n).obj for n in names)).validate_python(entry), []
    except ValidationError as e:
        return None, _errors(entry, e, f"report.{i}", names)


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


def parse_report(entries: list) -> list[Chart]:
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


def describe(e: Chart) -> str:
    """A heading for an entry without a title, e.g. 'bar: accuracy by train.augment.rotation'."""
    return e.heading()


def build_chart(tables: Tables, entry: Chart | dict, i: int = 0) -> alt.TopLevelMixin:
    """The Altair chart of one report entry (raises StudyError when its data are missing)."""
    if isinstance(entry, dict):
        entry, errs = _parse(entry, i)
        if errs:
            raise errs[0] if len(errs) == 1 else StudyErrors(errs)
    data = ChartData(tables, entry, i)
    if not len(tables.completed):
        raise StudyError("no completed trials yet", path=data.path(), hint="run the study (or wait for it)")
    return entry.build(data)


# ---------------------------------------------------------------------------------- tables

def summary_table(tables: Tables, max_metrics: int | None = None) -> pd.DataFrame:
    """Per configuration (seeds pooled): n and 'mean ± std' of the main scalar metrics."""
    done = tables.completed
    # Health values have their own table (analysis.health); the summary gets a healthy count.
    metrics = [m for m in tables.metric_columns if not m.startswith(("time.", "health.")) and not
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
    out = wide.join(seeds)
    if has_health(done):
        out["healthy"] = [f"{(~unhealthy_mask(g)).sum()}/{len(g)}" for _, g in done.groupby("label", sort=False)]
    return out.reset_index()[["label", "trials", *(["healthy"] if "healthy" in out.columns else []),
                              *wide.columns]]


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


def _section(tables: Tables, e: Chart, i: int, assets: Path, png: bool) -> tuple[str, dict | None, str | None]:
    """One chart's place on the page: (HTML, Vega-Lite spec or None, problem or None); with
    `png`, also its PNG and SVG files."""
    cid = f"chart-{i + 1}"
    try:
        note = left_out_note(ChartData(tables, e.model_copy(update={"healthy_only": False}), i).trials) \
            if e.healthy_only else ""
    except (StudyError, KeyError, ValueError):
        note = ""   # the chart's own error says what is wrong
    head = f"<h2>{i + 1}. {html.escape((e.title or describe(e)) + note)}</h2>"
    try:
        spec = build_chart(tables, e, i).to_dict()
    except (StudyError, KeyError, ValueError) as err:
        msg = err.render() if isinstance(err, StudyError) else f"report.{i}: {err}"
        return (f'{head}<div id="{cid}" class="chart missing" data-chart="{e.chart}" '
                f'data-missing="1">Not drawn: {html.escape(msg)}</div>'), None, msg
    files = ""
    if png:
        import vl_convert
        stem = f"{i + 1:02d}-{e.chart}"
        (assets / f"{stem}.png").write_bytes(vl_convert.vegalite_to_png(spec, vl_version=VL_VERSION, scale=2))
        (assets / f"{stem}.svg").write_text(vl_convert.vegalite_to_svg(spec, vl_version=VL_VERSION))
        rel = f"{assets.name}/{stem}"
        files = f'<div class="files"><a href="{rel}.png">PNG</a> · <a href="{rel}.svg">SVG</a></div>'
    return f'{head}<div id="{cid}" class="chart" data-chart="{e.chart}"></div>{files}', spec, None


def _chart_tables(tables: Tables, entries: list[Chart], assets: Path) -> str:
    """The tables charts write beside themselves (e.g. Pareto attainment): CSV files and HTML."""
    out = ""
    for i, e in enumerate(entries):
        try:
            extra = e.csv_tables(ChartData(tables, e, i))
        except (StudyError, KeyError, ValueError):
            continue  # the chart's section already says what is missing
        for stem, (heading, df) in extra.items():
            df.to_csv(assets / f"{stem}-{i + 1:02d}.csv", index=False)
            out += f"<h3>{html.escape(heading)}</h3>" + _html_table(df.round(4))
    return out


def _page(tables: Tables, sections: list[str], specs: dict, extra_html: str, assets: Path,
          summary: pd.DataFrame) -> str:
    state = ", ".join(f"{v} {k}" for k, v in tables.counts().items())
    desc = html.escape(str(tables.plan.get("description") or "").strip())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>raystudy report: {html.escape(tables.name)}</title>
<style>{CSS}{HEALTH_CSS}</style>
<script>{javascript_bundle()}</script></head>
<body>
<h1>Study <code>{html.escape(tables.name)}</code></h1>
<p class="desc">{desc}</p>
<p id="status">{len(tables.trials)} trials: {html.escape(state)}. Results: <code>{html.escape(str(tables.path))}</code></p>
<h2>Health</h2>
{health_html(tables)}
{''.join(sections)}
<h2>Summary per configuration</h2>
<p class="desc">mean ± std over seeds; full table in {assets.name}/summary.csv</p>
{_html_table(summary)}
{extra_html}
<h2>Trials not completed</h2>
{_html_table(status_table(tables))}
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


def build_report(results_dir: Path, out: Path | None = None, png: bool = True) -> Path:
    """Write report.html (+ report/ with one PNG and SVG per chart and CSV tables); returns the HTML path."""
    tables = judge_tables(load(results_dir))
    entries = parse_report(tables.report or default_report(tables))
    out = Path(out) if out else Path(results_dir) / "report.html"
    assets = out.parent / out.stem
    assets.mkdir(parents=True, exist_ok=True)
    sections, specs, problems = [], {}, []
    for i, e in enumerate(entries):
        section, spec, problem = _section(tables, e, i, assets, png)
        sections.append(section)
        if spec is not None:
            specs[f"chart-{i + 1}"] = spec
        if problem:
            problems.append(problem)
    summary = summary_table(tables)
    summary.to_csv(assets / "summary.csv", index=False)
    tables.completed.drop(columns=["error"], errors="ignore").to_csv(assets / "trials.csv", index=False)
    if has_health(tables.completed):
        health_table(tables).to_csv(assets / "health.csv", index=False)
    extra_html = _chart_tables(tables, entries, assets)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(_page(tables, sections, specs, extra_html, assets, summary))
    for msg in problems:
        print(f"warning: {msg}", file=sys.stderr)
    return out


__all__ = ["build_report", "build_chart", "validate_report", "parse_report", "default_report", "CHARTS",
           "summary_table", "split_ref", "Chart", "ChartData", "report_chart"]
