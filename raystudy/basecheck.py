"""The study's plan as recorded in study.json, and the check that a re-run shares its base.

Results are reused by trial id, which hashes a trial's whole config; a changed base (the
trial-level config outside `space`) would silently mix two different studies in one folder,
so it is refused with a diff, or, with --force-new, the old folder is moved aside.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import StudyError
from .layout import PLAN, TRIALS, Layout
from .spec.claims import independent_axes
from .spec.load import StudyDocument
from .spec.paths import digest


def plan_record(study: StudyDocument) -> dict:
    """What study.json holds (analysis, status, warm starts and this check read it)."""
    plan = study.plan
    return {
        "name": study.name,
        "file": study.file,
        "description": study.spec.description,
        "base": study.base_config(),
        "base_fingerprint": plan.fingerprint,
        "base_hash": plan.base_hash,
        "varied": sorted(plan.varied),
        # The space keys that vary on their own (claims pair and group trials by them).
        "axes": independent_axes(study.spec.space, study.file),
        "report": study.spec.report,
        "claims": [c.model_dump(mode="json", exclude_none=True) for c in study.spec.claims],
        # The health options the trials were judged with (`raystudy status` re-judges with them).
        "health": study.spec.health.model_dump(),
        "trials": [t.to_ray() for t in plan.trials],
    }


def _diff(old: dict, new: dict, limit: int = 20) -> list[str]:
    lines = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k, "(absent)"), new.get(k, "(absent)")
        if a != b:
            lines.append(f"  {k}: {json.dumps(a, default=str)} -> {json.dumps(b, default=str)}")
    if len(lines) > limit:
        lines = lines[:limit] + [f"  ... and {len(lines) - limit} more"]
    return lines


def _changed_keys(old: dict, new: dict) -> list[str]:
    return [k for k in sorted(set(old) | set(new)) if old.get(k, "(absent)") != new.get(k, "(absent)")]


def _varied_in(trials: list[dict]) -> set[str]:
    """For a plan recorded before `varied` was: the params that take more than one value
    (params also hold constants whose value is a mapping, which are not an axis)."""
    seen: dict[str, set[str]] = {}
    for t in trials:
        for k, v in (t.get("params") or {}).items():
            seen.setdefault(k, set()).add(json.dumps(v, sort_keys=True, default=str))
    return {k for k, vals in seen.items() if len(vals) > 1}


def _covered(key: str, varied: set[str]) -> bool:
    key = key[len("space."):] if key.startswith("space.") else key
    return any(key == v or key.startswith(v + ".") for v in varied)


def _recorded_plan(layout: Layout) -> dict | None:
    if not (layout / TRIALS).exists() or not (layout / PLAN).exists():
        return None
    try:
        return layout.read_plan()
    except StudyError:
        return None  # unreadable: nothing to compare (the run writes it anew)


def check_base(study: StudyDocument, out: Path, force_new: bool) -> Path | None:
    """Refuse to mix results of a changed base config; with force_new move the old ones aside
    (returns where they went)."""
    layout = Layout(out)
    if force_new:
        return layout.move_aside() if out.exists() and layout.has_results() else None
    old_plan = _recorded_plan(layout)
    old = (old_plan or {}).get("base_fingerprint")
    if old is None:
        return None  # nothing recorded, or recorded by an older raystudy: nothing to compare
    plan = study.plan
    if digest(old) == plan.base_hash:
        return None
    old_varied = set(old_plan.get("varied") or _varied_in(old_plan.get("trials", [])))
    # A path that one run varied and the other holds fixed (`--set train.augment.rotation=90`
    # pins an axis; dropping the pin widens it again) selects other trials of the same study:
    # their ids decide what is reused, so it is not a change of the base.
    new = plan.fingerprint
    changed = [k for k in _changed_keys(old, new)
               if not ((k not in old and _covered(k, old_varied)) or (k not in new and _covered(k, plan.varied)))]
    if not changed:
        return None
    raise StudyError(
        f"the study's base config changed since the results in {out} were recorded:\n"
        + "\n".join(_diff({k: v for k, v in old.items() if k in changed},
                          {k: v for k, v in new.items() if k in changed})) + "\n",
        file=study.file, path=changed[0],
        hint="revert the change, use another --results folder, or run with --force-new to start "
             "afresh (the old results are moved to " + f"{out.name}.old-<time>, not deleted)")

