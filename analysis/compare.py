"""`raystudy report A B ...`: several studies on one page, the study as the colour.

Each results folder is loaded as it is (analysis.load); the page draws what the studies
share:
  - every curve metric all of them measured, with the same meaning of x (the rows'
    `x_title`: an L∞ and an L2 PGD profile are not overlaid), one line per configuration
    (seeds averaged), coloured by study;
  - every scalar metric all of them recorded: one point per configuration per study;
  - every config axis all of them have (varied in one, or held fixed by another, read from
    its plan), against which the shared scalars are drawn as lines per configuration.
What only some studies have is listed, not drawn. Trial ids are prefixed with the study
name, so the same configuration run by two studies stays two rows.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path

import altair as alt
import pandas as pd

from raystudy.errors import StudyError

from .aggregate import aggregate
from .charts import FMT, HEIGHT, WIDTH, curve_x_title, prep
from .load import Tables, config_label, load

# Scalars that describe how a run went, not what the model does: never overlaid.
_NOT_SCALARS = ("time.", "health.", "accuracy.val")
_SKIP = {"num_params", "final_loss", "wall_time_s", "train_time_s", "eval_time_s", "seed"}


@dataclass
class Overlay:
    """The completed trials and curve rows of several studies, with a `study` column."""

    studies: list[str]
    tables: list[Tables]
    trials: pd.DataFrame
    curves: pd.DataFrame
    scalars: list[str] = field(default_factory=list)
    curve_metrics: list[str] = field(default_factory=list)
    axes: list[str] = field(default_factory=list)
    not_shared: list[str] = field(default_factory=list)


def _names(tables: list[Tables]) -> list[str]:
    """Study names, made unique with the folder name when two folders hold the same study."""
    names = [t.name for t in tables]
    return [n if names.count(n) == 1 else f"{n} ({t.path.name})" for n, t in zip(names, tables)]


def _scalars(t: Tables) -> set[str]:
    done = t.completed
    return {c for c in t.metric_columns if not c.startswith(_NOT_SCALARS) and c not in _SKIP
            and not c.endswith("_s") and done[c].notna().any()}


def _curve_meaning(t: Tables) -> dict[str, str]:
    """Curve metric -> what its x means, for the completed trials' rows."""
    cur = t.curves[t.curves["trial_id"].isin(t.completed["trial_id"])] if len(t.curves) else t.curves
    if cur.empty or "metric" not in cur.columns:
        return {}
    return {m: curve_x_title(rows) for m, rows in cur.groupby("metric", sort=False)}


def _axes(tables: list[Tables]) -> list[str]:
    """Config paths some study varies that every study has (a fixed value counts)."""
    varied = list(dict.fromkeys(k for t in tables for k in t.varied if k not in ("seed", "label")))
    return [k for k in varied if all(t.add_config_column(k) for t in tables)]


def _shared(tables: list[Tables], names: list[str]) -> tuple[list[str], list[str], list[str]]:
    """(shared scalars, shared curve metrics, notes on what is not shared)."""
    scal = [_scalars(t) for t in tables]
    shared_s = [c for c in tables[0].metric_columns if all(c in s for s in scal)]
    notes = [f"scalar {c}: only in {', '.join(n for n, s in zip(names, scal) if c in s)}"
             for c in sorted(set().union(*scal) - set(shared_s))]
    mean = [_curve_meaning(t) for t in tables]
    shared_c = []
    for m in dict.fromkeys(k for d in mean for k in d):
        have = [n for n, d in zip(names, mean) if m in d]
        if len(have) < len(tables):
            notes.append(f"curve {m}: only in {', '.join(have)}")
        elif len({d[m] for d in mean}) > 1:
            notes.append(f"curve {m}: x means " + "; ".join(f"{d[m]} in {n}" for n, d in zip(names, mean)))
        else:
            shared_c.append(m)
    return shared_s, shared_c, notes


def combine(dirs: list[str | Path]) -> Overlay:
    """Load the results folders and keep what they share (see the module docstring)."""
    if len(dirs) < 2:
        raise StudyError("a cross-study report needs two or more results folders", path="DIR",
                         hint="raystudy report results/A results/B")
    tables = [load(d) for d in dirs]
    names = _names(tables)
    empty = [str(t.path) for t in tables if t.completed.empty]
    if empty:
        raise StudyError(f"no completed trials in {', '.join(empty)}", path="DIR",
                         hint="run those studies first, or leave them out")
    axes = _axes(tables)
    scalars, curve_metrics, notes = _shared(tables, names)
    trials, curves = [], []
    for name, t in zip(names, tables):
        done = t.completed.copy()
        keys = [k for k in t.varied if k not in ("seed", "label")]
        done["config"] = [config_label(r, keys) for _, r in done.iterrows()]
        for a in axes:
            done[f"rest:{a}"] = [config_label(r, [k for k in keys if k != a]) for _, r in done.iterrows()]
        ids = {tid: f"{name}/{tid}" for tid in done["trial_id"]}
        done = done.assign(study=name, trial_id=done["trial_id"].map(ids))
        trials.append(done[["trial_id", "study", "config", *axes, *[f"rest:{a}" for a in axes],
                            *[c for c in scalars if c in done.columns]]])
        cur = t.curves[t.curves["trial_id"].isin(ids) & t.curves["metric"].isin(curve_metrics)] \
            if len(t.curves) else t.curves
        curves.append(cur.assign(trial_id=cur["trial_id"].map(ids)))
    trials_df = pd.concat(trials, ignore_index=True)
    curves_df = pd.concat(curves, ignore_index=True).merge(trials_df[["trial_id", "study", "config"]],
                                                           on="trial_id")
    return Overlay(names, tables, trials_df, curves_df, scalars, curve_metrics, axes, notes)


# ------------------------------------------------------------------------------ charts

def _color(ov: Overlay) -> alt.Color:
    return alt.Color("study", type="nominal", title="study", scale=alt.Scale(scheme="tableau10"),
                     sort=ov.studies)


def _lines(agg: pd.DataFrame, x: str, x_title: str, y_title: str, detail: str, ov: Overlay,
           title: str) -> alt.Chart:
    data, f = prep(agg, [x, "study", detail, "mean", "std", "n"])
    tips = [alt.Tooltip("study"), alt.Tooltip(f[detail], title="configuration"),
            alt.Tooltip(f[x], title=x_title), alt.Tooltip("mean", title=f"{y_title} (mean)", format=FMT),
            alt.Tooltip("std", format=FMT), alt.Tooltip("n", title="seeds")]
    x_type = "quantitative" if pd.api.types.is_numeric_dtype(agg[x]) else "ordinal"
    return alt.Chart(data).mark_line(point=True).encode(
        x=alt.X(f[x], type=x_type, title=x_title, scale=alt.Scale(zero=False)),
        y=alt.Y("mean", type="quantitative", title=y_title, scale=alt.Scale(zero=False)),
        color=_color(ov), detail=alt.Detail(f[detail], type="nominal"), tooltip=tips,
    ).properties(width=WIDTH, height=HEIGHT, title=alt.Title(title, subtitle="one line per configuration, "
                                                             "mean over seeds; colour: study"))


def overlay_profile(ov: Overlay, metric: str, y: str = "accuracy") -> alt.Chart:
    """A shared curve metric: one line per configuration, coloured by study."""
    rows = ov.curves[ov.curves["metric"] == metric]
    if rows.empty or y not in rows.columns:
        raise StudyError(f"no curve rows of '{metric}' with a '{y}' column in every study", path="DIR")
    agg = aggregate(rows, ["study", "config", "x"], y).dropna(subset=["mean"])
    return _lines(agg, "x", curve_x_title(rows), y, "config", ov, f"{metric}: {y}")


def overlay_axis(ov: Overlay, axis: str, metric: str) -> alt.Chart:
    """A shared scalar over a shared config axis: one line per configuration of the other axes."""
    rest = f"rest:{axis}"
    agg = aggregate(ov.trials, ["study", rest, axis], metric).dropna(subset=["mean"])
    return _lines(agg, axis, axis, metric, rest, ov, f"{metric} vs {axis}")


def overlay_scalar(ov: Overlay, metric: str) -> alt.Chart:
    """A shared scalar: each configuration's mean over seeds, per study."""
    agg = aggregate(ov.trials, ["study", "config"], metric).dropna(subset=["mean"])
    data, f = prep(agg, ["study", "config", "mean", "std", "n"])
    return alt.Chart(data).mark_point(filled=True, size=70).encode(
        x=alt.X("study", type="nominal", sort=ov.studies, axis=alt.Axis(labelAngle=0)),
        y=alt.Y("mean", type="quantitative", title=metric, scale=alt.Scale(zero=False)),
        color=_color(ov), tooltip=[alt.Tooltip("study"), alt.Tooltip(f["config"], title="configuration"),
                                   alt.Tooltip("mean", format=FMT), alt.Tooltip("std", format=FMT),
                                   alt.Tooltip("n", title="seeds")],
    ).properties(width=WIDTH, height=HEIGHT, title=alt.Title(metric, subtitle="one point per configuration, "
                                                             "mean over seeds"))


def overlay_charts(ov: Overlay) -> list[tuple[str, str, alt.Chart]]:
    """(file stem, heading, chart) for everything the studies share."""
    out = []
    for m in ov.curve_metrics:
        y = "density" if m.endswith("density") else "accuracy"
        if y in ov.curves[ov.curves["metric"] == m].columns:
            out.append((f"profile-{m}", f"profile: {m} ({y})", overlay_profile(ov, m, y)))
    for a in ov.axes:
        for m in ov.scalars:
            out.append((f"line-{m}-{a}", f"line: {m} vs {a}", overlay_axis(ov, a, m)))
    for m in ov.scalars:
        out.append((f"points-{m}", f"points: {m} by study", overlay_scalar(ov, m)))
    return out


# -------------------------------------------------------------------------------- page

def summary(ov: Overlay) -> pd.DataFrame:
    """Per study and configuration: trials and the mean of each shared scalar."""
    if not ov.scalars:
        return ov.trials.groupby(["study", "config"], sort=False).size().rename("trials").reset_index()
    g = ov.trials.groupby(["study", "config"], sort=False)
    return g[ov.scalars].mean().join(g.size().rename("trials")).reset_index()


def _page(ov: Overlay, sections: list[str], specs: dict, table: pd.DataFrame, assets: Path) -> str:
    from .report import CSS, javascript_bundle
    studies = "".join(f"<li><b>{html.escape(n)}</b>: {len(t.completed)} completed trials in "
                      f"<code>{html.escape(str(t.path))}</code></li>" for n, t in zip(ov.studies, ov.tables))
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in ov.not_shared) or "<li>none</li>"
    specs_json = json.dumps(specs, default=str).replace("</", "<\\/")
    rows = table.round(4).to_html(index=False, escape=True, na_rep="", border=0) if len(table) else "<p>none</p>"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>raystudy report: {html.escape(' + '.join(ov.studies))}</title>
<style>{CSS}</style><script>{javascript_bundle()}</script></head><body>
<h1>Studies {html.escape(', '.join(ov.studies))}</h1>
<ul id="studies">{studies}</ul>
<p class="desc">shared axes: {html.escape(', '.join(ov.axes) or 'none')}</p>
{''.join(sections)}
<h2>Per study and configuration</h2>
<p class="desc">mean over seeds of the shared scalars; the table is {assets.name}/summary.csv</p>
{rows}
<h2>Not overlaid</h2><ul id="not-shared">{notes}</ul>
<script>
const SPECS = {specs_json};
for (const [id, spec] of Object.entries(SPECS)) {{
  const el = document.getElementById(id);
  vegaEmbed(el, spec, {{renderer: "svg", actions: {{export: true, source: false, compiled: false, editor: false}}}})
    .then(() => {{ el.dataset.rendered = "1"; }})
    .catch(err => {{ el.dataset.rendered = "error"; console.error("chart " + id + ": " + err); }});
}}
</script></body></html>
"""


def build_cross_report(dirs: list[str | Path], out: Path | None = None, png: bool = True) -> Path:
    """Write the overlay page (+ a folder with PNG/SVG per chart, summary.csv and trials.csv)."""
    from .report import VL_VERSION
    ov = combine(dirs)
    charts = overlay_charts(ov)
    if not charts:
        raise StudyError(f"the studies {', '.join(ov.studies)} share no metric", path="DIR",
                         hint="; ".join(ov.not_shared[:6]) or None)
    out = Path(out) if out else Path(dirs[0]).parent / f"compare-{'-'.join(t.path.name for t in ov.tables)}.html"
    assets = out.parent / out.stem
    assets.mkdir(parents=True, exist_ok=True)
    sections, specs = [], {}
    for i, (stem, heading, chart) in enumerate(charts):
        cid = f"chart-{i + 1}"
        spec = chart.to_dict()
        specs[cid] = spec
        files = ""
        if png:
            import vl_convert
            name = f"{i + 1:02d}-{stem}".replace("/", "_")
            (assets / f"{name}.png").write_bytes(vl_convert.vegalite_to_png(spec, vl_version=VL_VERSION, scale=2))
            (assets / f"{name}.svg").write_text(vl_convert.vegalite_to_svg(spec, vl_version=VL_VERSION))
            files = (f'<div class="files"><a href="{assets.name}/{name}.png">PNG</a> · '
                     f'<a href="{assets.name}/{name}.svg">SVG</a></div>')
        sections.append(f'<h2>{i + 1}. {html.escape(heading)}</h2><div id="{cid}" class="chart"></div>{files}')
    table = summary(ov)
    table.to_csv(assets / "summary.csv", index=False)
    ov.trials.to_csv(assets / "trials.csv", index=False)
    out.write_text(_page(ov, sections, specs, table, assets))
    return out
