"""Which recorded trials are unhealthy, and the lines that say so (no torch, no Ray).

A trial's checks record their measured values as `health.<check>` columns; pass or fail is
decided by `raystudy.health.judge(row, options)` into `health.ok` (bool) and `health.flags`
(the failed checks, comma-separated), when the driver records the trial. This module surfaces
that verdict: `raystudy run` prints a warning line per unhealthy trial as it finishes,
`raystudy status` lists them, and the report shows a badge per trial, a health table and can
leave unhealthy trials out of a chart (analysis.health). A trial without `health.ok` was never
judged (recorded before the checks existed): it is neither healthy nor unhealthy.

`rejudge` applies the study's current `health:` tolerances (from study.json) to the recorded
values, so a changed tolerance takes effect in `status` and the report without retraining.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

OK, FLAGS, PREFIX = "health.ok", "health.flags", "health."


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def verdict(row: dict) -> tuple[bool | None, list[str]]:
    """(ok, failed checks) of a trials row; ok is None when the trial was never judged."""
    ok = row.get(OK)
    if _missing(ok):
        return None, []
    flags = row.get(FLAGS)
    names = [] if _missing(flags) else [f.strip() for f in str(flags).split(",") if f.strip()]
    return bool(ok), names


def unhealthy(rows: Iterable[dict]) -> list[tuple[str, list[str]]]:
    """(trial id, failed checks) of every completed trial judged unhealthy, in order."""
    out = []
    for r in rows:
        ok, flags = verdict(r)
        if ok is False and r.get("status", "completed") == "completed":
            out.append((r["trial_id"], flags))
    return out


def describe(trial_id: str, params: dict | None, flags: list[str]) -> str:
    """'abc123 (rotation=60, seed=0): did_not_learn, robustness.pgd.monotone_rise'."""
    ps = ", ".join(f"{k}={v}" for k, v in (params or {}).items())
    return f"{trial_id}" + (f" ({ps})" if ps else "") + f": {', '.join(flags) or 'unhealthy'}"


def warning_line(trial_id: str, params: dict | None, flags: list[str]) -> str:
    """The line `raystudy run` prints when a trial finishes unhealthy."""
    return f"raystudy: warning: unhealthy trial {describe(trial_id, params, flags)}"


def measured(row: dict) -> dict[str, Any]:
    """The check values a row holds (`health.<check>` other than ok / flags), missing ones left out."""
    return {k: v for k, v in row.items() if k.startswith(PREFIX) and k not in (OK, FLAGS) and not _missing(v)}


def rejudge(rows: list[dict], plan: dict | None) -> list[dict]:
    """The rows with `health.ok` / `health.flags` judged anew under the study's recorded
    `health:` options. Rows without any measured check keep what they have (never judged stays
    never judged). Without raystudy.health (the checks' module) the recorded verdicts stand."""
    try:
        from .health import HealthOptions, judge
    except ImportError:   # the checks' module is not installed: keep the recorded verdicts
        return rows
    options = HealthOptions.model_validate((plan or {}).get("health") or {})
    out = []
    for r in rows:
        if measured(r) and r.get("status", "completed") == "completed":
            ok, flags = judge({k: v for k, v in r.items() if not _missing(v)}, options)
            r = {**r, OK: bool(ok), FLAGS: ",".join(flags)}
        out.append(r)
    return out
