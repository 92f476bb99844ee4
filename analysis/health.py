"""Trial health in the report: a badge per trial, the health table, and what `healthy_only`
leaves out of a chart.

The verdict per trial (`health.ok`, `health.flags`) and the measured values (`health.<check>`)
are columns of trials.parquet (raystudy.healthview explains them); `judge_tables` re-judges
them under the study's current `health:` options before the report reads them.
"""

from __future__ import annotations

import html

import pandas as pd

from raystudy.healthview import FLAGS, OK, PREFIX, rejudge, verdict

from .load import Tables

BADGES = {True: ("ok", "✓ healthy"), False: ("bad", "✗ unhealthy"), None: ("none", "– not checked")}
CSS = """.badge{padding:1px 6px;border-radius:8px;font-size:12px;white-space:nowrap}
.badge.ok{background:#e3f4e3;color:#1a6b1a} .badge.bad{background:#fde2e1;color:#a1150f}
.badge.none{background:#eee;color:#666}"""


def judge_tables(tables: Tables) -> Tables:
    """The tables with every recorded trial judged under the study's `health:` options."""
    if any(c.startswith(PREFIX) for c in tables.trials.columns):
        rows = tables.trials.to_dict("records")
        judged = rejudge(rows, tables.plan)
        if judged is not rows:
            tables.trials = pd.DataFrame(judged)
    return tables


def has_health(trials: pd.DataFrame) -> bool:
    return OK in trials.columns and trials[OK].notna().any()


def unhealthy_mask(trials: pd.DataFrame) -> pd.Series:
    """True for the trials judged unhealthy (never-judged trials are not)."""
    if OK not in trials.columns:
        return pd.Series(False, index=trials.index)
    return trials[OK].map(lambda v: verdict({OK: v})[0] is False)


def healthy_only(trials: pd.DataFrame) -> pd.DataFrame:
    """The trials a chart with `healthy_only: true` keeps: all but those judged unhealthy."""
    return trials[~unhealthy_mask(trials)]


def health_table(tables: Tables) -> pd.DataFrame:
    """One row per completed trial: id, label, verdict, failed checks, then each measured check."""
    done = tables.completed
    checks = sorted(c for c in done.columns if c.startswith(PREFIX) and c not in (OK, FLAGS))
    rows = []
    for r in done.to_dict("records"):
        ok, flags = verdict(r)
        rows.append({"trial_id": r["trial_id"], "label": r.get("label"), "health": BADGES[ok][1],
                     "flags": ", ".join(flags), **{c: r.get(c) for c in checks}})
    return pd.DataFrame(rows, columns=["trial_id", "label", "health", "flags", *checks])


def _badge(text: str) -> str:
    kind = next(k for k, t in BADGES.values() if t == text)
    return f'<span class="badge {kind}">{html.escape(text)}</span>'


def health_html(tables: Tables) -> str:
    """The report's health section: counts, then the table with a badge per trial."""
    if tables.completed.empty:
        return "<p><em>no completed trials yet</em></p>"
    if not has_health(tables.completed):
        return "<p><em>no health checks recorded for these trials</em></p>"
    df = health_table(tables)
    bad = int((df["health"] == BADGES[False][1]).sum())
    head = (f'<p id="health-summary">{len(df) - bad} of {len(df)} completed trials healthy'
            + (f", <strong>{bad} unhealthy</strong>: their numbers may not be believable" if bad else "")
            + ".</p>")
    shown = df.copy()
    for c in shown.columns:
        if c != "health":
            shown[c] = [("" if pd.isna(v) else html.escape(f"{v:.4g}" if isinstance(v, float) else str(v)))
                        for v in shown[c]]
    shown["health"] = [_badge(t) for t in shown["health"]]
    return head + shown.to_html(index=False, escape=False, border=0, table_id="health")


def left_out_note(trials: pd.DataFrame) -> str:
    """The heading note of a `healthy_only` chart whose `where:` keeps `trials`: how many of them
    it leaves out."""
    n = int(unhealthy_mask(trials[trials["status"] == "completed"]).sum())
    return f" (healthy trials only: {n} unhealthy left out)" if n else " (healthy trials only)"
