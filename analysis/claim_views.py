"""The verdict table of claims.parquet as text (`raystudy claims`), Markdown (docs/EXPERIMENTS.md,
written by docs/experiments/claims_tables.py) and HTML (the top of the report)."""

from __future__ import annotations

import html
import math

import pandas as pd

MARK = {"supported": "✔ supported", "contradicted": "✘ contradicted", "inconclusive": "? inconclusive"}
COLOURS = {"supported": "#e6f4ea", "contradicted": "#fde8e8", "inconclusive": "#fff8e1"}


def _num(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return f"{v:+.3f}" if abs(v) < 10 else f"{v:+.1f}"


def interval(r) -> str:
    """'+0.1 [+0.05, +0.15]' (effect and its 95% interval), or the effect alone."""
    if pd.isna(r["lo"]) or pd.isna(r["hi"]):
        return _num(r["effect"])
    return f"{_num(r['effect'])} [{_num(r['lo'])}, {_num(r['hi'])}]"


def expectation(r) -> str:
    m = r.get("margin")
    return r["expect"] + ("" if m is None or pd.isna(m) else f" (±{m:g})")


def rows(df: pd.DataFrame) -> list[dict]:
    """One display row per claim: claim, metric, expect, verdict, effect [95% interval], n, test, note."""
    out = []
    for _, r in df.iterrows():
        n = f"{int(r['n'])} {r['unit']}" if r["unit"] else "—"
        test = r["test"] + (f", p = {r['p']:.2g}" if not pd.isna(r["p"]) else "")
        note = r["note"] + (f" [{r['unhealthy']} unhealthy]" if r["unhealthy"] and "unhealthy" not in r["note"] else "")
        out.append({"claim": r["claim"], "metric": r["metric"], "expect": expectation(r), "verdict": r["verdict"],
                    "effect [95% interval]": interval(r), "n": n, "test": test or "—", "note": note})
    return out


def text_table(df: pd.DataFrame) -> str:
    if df.empty:
        return "no claims"
    view = pd.DataFrame(rows(df)).drop(columns=["note"])
    view["verdict"] = view["verdict"].map(MARK)
    lines = view.to_string(index=False).splitlines()
    notes = [f"  {r['claim']}: {r['note']}" for r in rows(df) if r["note"]]
    return "\n".join(lines + (["notes:"] + notes if notes else []))


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_table(df: pd.DataFrame) -> str:
    if df.empty:
        return "_No claims declared._"
    cols = ["claim", "metric", "expect", "verdict", "effect [95% interval]", "n", "test", "note"]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows(df):
        r = {**r, "claim": f"`{r['claim']}`", "metric": f"`{r['metric']}`", "verdict": f"**{r['verdict']}**"}
        out.append("| " + " | ".join(_md(r[c]) for c in cols) + " |")
    return "\n".join(out)


def html_table(df: pd.DataFrame) -> str:
    if df.empty:
        return ""
    cols = ["claim", "metric", "expect", "verdict", "effect [95% interval]", "n", "test", "note"]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = []
    for r, about in zip(rows(df), df["about"]):
        cells = []
        for c in cols:
            text = html.escape(str(r[c]))
            if c == "claim" and about:
                text = f'<span title="{html.escape(str(about))}">{text}</span>'
            style = f' style="background:{COLOURS.get(r["verdict"], "#fff")}"' if c == "verdict" else ""
            cells.append(f"<td{style}>{text}</td>")
        body.append(f'<tr class="claim" data-verdict="{html.escape(r["verdict"])}">' + "".join(cells) + "</tr>")
    return (f'<table id="claims"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>')
