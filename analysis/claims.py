"""Verdicts of a study's claims (its `claims:` section, raystudy/spec/claimspec.py), computed
from the results folder: `claims.parquet`, the verdict table of the report and of
`raystudy claims DIR`. Recomputed whenever the study is run again or widened. No torch, no Ray.

compare (a against b on a metric). Trials of a are paired with trials of b that agree on every
other independent axis (the space's grid/choice/... keys and zip keys; `expr` entries and a
zip's paths are derived and never pair): an axis whose values in a and in b do not overlap is
part of what separates a from b and is not matched. Trials sharing a pair's key are averaged.
The effect is mean(a − b) over pairs, and its 95% interval comes from, in this order:
  1. seed pairs: the pairs cover at least 2 seeds: a paired t interval over the pairs;
  2. examples: one seed, and per-example outcomes reproduce the metric: for one pair of single
     trials on a proportion, the exact McNemar test (its p) with Newcombe's paired interval;
     otherwise a paired bootstrap over the evaluated examples (2,000 resamples);
  3. config pairs: one seed, no outcomes, at least 3 pairs across the other axes: paired t;
  4. otherwise inconclusive ("too few").
trend (a metric along a numeric axis). Groups are the combinations of the other independent
axes (not `within`'s, nor an axis that fixes `over` among the selected trials, such as the
`level` behind `rotation = level * 180`); a group must show at least 2 values of `over`. The
statistic (Spearman's rho by default, Kendall's tau-b, or the least-squares change of the
metric over the axis' range: the default for flat) is averaged over groups; its interval:
  1. groups: at least 3 groups covering at least 2 seeds: bootstrap over groups;
  2. examples: per-example outcomes: bootstrap over the examples;
  3. groups: one seed, at least 3 groups of the other axes: bootstrap over groups;
  4. otherwise inconclusive.
Verdicts (analysis/claim_stats.verdict): supported / contradicted when the interval lies wholly
on the expected / the opposite side of 0 (inside / outside ±margin for equal and flat),
inconclusive otherwise. With one seed the interval covers the sampling of the evaluated
examples, not the randomness of training: the note says so. A claim whose selection names a
value this run does not have (a profile pinned the axis) is inconclusive with that reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from raystudy.errors import StudyError
from raystudy.layout import CLAIMS, Layout
from raystudy.results import write_atomic
from raystudy.spec.claimspec import ClaimSpec, CompareSpec, TrendSpec, as_number, matches, split_point

from . import claim_stats as cs
from .claim_outcomes import OutcomeIndex, bootstrap_pairs, bootstrap_trend
from .load import Tables, load
from .paired import load_outcomes, mcnemar_exact

COLUMNS = ["claim", "kind", "metric", "expect", "margin", "verdict", "effect", "lo", "hi", "n", "unit", "test",
           "statistic", "p", "unhealthy", "note", "about"]
ONE_SEED = "one seed: the interval covers the evaluated examples, not training randomness"


@dataclass
class Result:
    effect: float = math.nan
    lo: float = math.nan
    hi: float = math.nan
    n: int = 0
    unit: str = ""
    test: str = ""
    p: float = math.nan
    used: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    def set(self, effect, lo, hi, n, unit, test) -> "Result":
        self.effect, self.lo, self.hi, self.n, self.unit, self.test = effect, lo, hi, int(n), unit, test
        return self


def _norm(v):
    n = as_number(v)
    return round(n, 9) if n is not None else str(v)


class Claims:
    """A results folder's completed trials, as claims see them."""

    def __init__(self, tables: Tables, outcomes: pd.DataFrame | None = None, n_boot: int = cs.N_BOOT,
                 seed: int = 0):
        self.t = tables
        self.axes = list(tables.plan.get("axes") or tables.varied)
        self.outcomes = OutcomeIndex(outcomes)
        self.n_boot, self.seed = n_boot, seed
        self._refresh()

    def _refresh(self) -> None:
        self.all = self.t.trials.set_index("trial_id", drop=False)
        self.done = self.all[self.all["status"] == "completed"]

    def column(self, path: str, frame: pd.DataFrame | None = None) -> pd.Series:
        """A config column (a fixed config path is read from study.json once), aligned to frame."""
        frame = self.done if frame is None else frame
        if path not in self.all.columns:
            if not self.t.add_config_column(path):
                raise StudyError(f"no trial records '{path}'", path=path)
            self._refresh()
        return self.all[path].reindex(frame.index)

    def select(self, sel: dict, frame: pd.DataFrame | None = None) -> pd.Series:
        frame = self.done if frame is None else frame
        mask = pd.Series(True, index=frame.index)
        for key, wanted in sel.items():
            mask &= self.column(key, frame).map(lambda v, w=wanted: matches(v, w)).astype(bool)
        return mask

    def values(self, ref: str) -> pd.Series:
        """One number per completed trial for a scalar column or a curve point (module doc)."""
        done = self.done
        if ref in done.columns:
            return pd.to_numeric(done[ref], errors="coerce").astype(float)
        metric, x, col = split_point(ref)
        cur = self.t.curves
        names = set(cur["metric"].dropna()) if "metric" in cur.columns else set()
        if x is not None and metric not in names and metric.endswith(".acc") and not col:
            metric, col = metric[: -len(".acc")], "accuracy"
        if x is None or metric not in names:
            raise StudyError(f"'{ref}' is not measured by any completed trial", path=ref)
        rows = cur[cur["metric"] == metric]
        col = col or ("accuracy" if "accuracy" in rows.columns else "value")
        xs = pd.to_numeric(rows["x"], errors="coerce").to_numpy(dtype=float)
        hit = rows[np.isclose(xs, as_number(x) or math.nan, rtol=1e-4, atol=1e-9)]
        if hit.empty or col not in hit.columns:
            raise StudyError(f"curve '{metric}' has no point at x = {x} with a column '{col}'", path=ref)
        s = pd.to_numeric(hit[col], errors="coerce").groupby(hit["trial_id"]).mean()
        return s.reindex(done.index).astype(float)

    def seeds(self, ids) -> int:
        return int(self.done.loc[list(ids), "seed"].nunique()) if "seed" in self.done.columns else 1

    def health(self, ids) -> tuple[int, str]:
        """Trials among `ids` flagged unhealthy (health.ok false) and their flags."""
        done = self.done.loc[list(ids)]
        if "health.ok" not in done.columns:
            return 0, ""
        bad = done[done["health.ok"].map(lambda v: str(v).lower() in ("false", "0", "0.0"))]
        flags = sorted({f for v in bad.get("health.flags", pd.Series(dtype=object)).dropna()
                        for f in str(v).split(",") if f})
        return len(bad), ", ".join(flags)

    def not_completed(self, *sels: dict) -> int:
        rest = self.all[self.all["status"] != "completed"]
        if not len(rest):
            return 0
        mask = pd.Series(False, index=rest.index)
        for sel in sels:
            mask |= self.select(sel, rest)
        return int(mask.sum())

    def absent(self, sel: dict) -> str:
        """Why a selection holds no usable trial: a value this run does not have, or nothing finished."""
        for key, wanted in sel.items():
            have = self.column(key, self.all).dropna().unique()
            if len(have) and not any(matches(v, wanted) for v in have):
                shown = ", ".join(str(v) for v in have[:8])
                return f"{key} = {wanted} is not in this run ({key}: {shown}): axis not varied here"
        return "no completed trial with a finite value"

    # ------------------------------------------------------------------ compare

    def compare(self, c: CompareSpec) -> Result:
        r = Result()
        within = self.select(c.within)
        va, vb = self.values(c.metric), self.values(c.b_metric)
        a_ids = list(self.done.index[within & self.select(c.a) & np.isfinite(va)])
        b_ids = list(self.done.index[within & self.select(c.b) & np.isfinite(vb)])
        for side, ids, sel in (("a", a_ids, {**c.within, **c.a}), ("b", b_ids, {**c.within, **c.b})):
            if not ids:
                r.notes.append(f"group {side}: " + self.absent(sel))
        if r.notes:
            return r
        fixed = set(c.a) | set(c.b) | set(c.within)
        keys = [q for q in self.axes if q not in fixed and q in self.done.columns and self._overlap(q, a_ids, b_ids)]
        ka, kb = self._keys(a_ids, keys), self._keys(b_ids, keys)
        common = [k for k in ka if k in kb]
        if not common:
            r.notes.append(f"no trial of a has a partner in b with the same {', '.join(keys)}")
            return r
        pairs = [(ka[k], kb[k]) for k in common]
        r.used = sorted({t for a, b in pairs for t in a + b})
        d = [va[a].mean() - vb[b].mean() for a, b in pairs]
        r.notes.append(f"{len(pairs)} pair(s) matched on {', '.join(keys)}" if keys
                       else "1 pair (no other axis to match)")
        if any(len(a) > 1 or len(b) > 1 for a, b in pairs):
            r.notes.append("trials sharing a pair's key averaged")
        seeds = len({k[keys.index('seed')] for k in common}) if "seed" in keys else 1
        if seeds >= 2 and len(d) >= 2:
            return r.set(*cs.paired_t(d), len(d), "seed pairs", "paired t")
        why = self._examples_compare(c, pairs, va, vb, r)
        if why is None:
            r.notes.append(ONE_SEED)
            return r
        if len(d) >= 3:
            r.notes.append(f"one seed and {why}: pairs across the other axes")
            return r.set(*cs.paired_t(d), len(d), "config pairs", "paired t")
        r.effect = float(np.mean(d))
        r.notes.append(f"too few: {len(d)} pair(s) on one seed, and {why}")
        return r

    def _overlap(self, q: str, a_ids, b_ids) -> bool:
        col = self.done[q]
        return bool({_norm(v) for v in col.loc[a_ids]} & {_norm(v) for v in col.loc[b_ids]})

    def _keys(self, ids, keys) -> dict[tuple, list]:
        out: dict[tuple, list] = {}
        for tid in ids:
            out.setdefault(tuple(_norm(self.done.at[tid, q]) for q in keys), []).append(tid)
        return out

    def _examples_compare(self, c: CompareSpec, pairs, va, vb, r: Result) -> str | None:
        """Fill r from per-example outcomes; None when done, else why not."""
        oa = self.outcomes.lookup(c.metric, va.loc[[t for a, _ in pairs for t in a]])
        ob = self.outcomes.lookup(c.b_metric, vb.loc[[t for _, b in pairs for t in b]])
        if isinstance(oa, str) or isinstance(ob, str):
            return oa if isinstance(oa, str) else ob
        sides = [([oa[t] for t in a], [ob[t] for t in b]) for a, b in pairs]
        if any(len({t.examples for t in a + b}) > 1 for a, b in sides):
            return "the trials of a pair were evaluated on different examples"
        if len(sides) == 1 and len(sides[0][0]) == len(sides[0][1]) == 1 and not any(t.auc for t in sum(sides[0], [])):
            x, y = sides[0][0][0].vector(), sides[0][1][0].vector()
            mc = mcnemar_exact(x, y)
            n11, n00 = int((x & y).sum()), int((~x & ~y).sum())
            r.p = mc["p"]
            r.set(*cs.newcombe_paired(n11, mc["n10"], mc["n01"], n00), len(x), "examples",
                  "exact McNemar, Newcombe interval")
            return None
        r.set(*bootstrap_pairs(sides, self.n_boot, self.seed), "examples", "paired bootstrap over examples")
        return None

    # -------------------------------------------------------------------- trend

    def trend(self, c: TrendSpec) -> Result:
        r = Result()
        v = self.values(c.metric)
        o = self.column(c.over).map(as_number).astype(float)
        ids = list(self.done.index[self.select(c.within) & np.isfinite(v) & np.isfinite(o)])
        if not ids:
            r.notes.append(self.absent(c.within))
            return r
        if o.loc[ids].nunique() < 2:
            r.notes.append(f"axis not varied: {c.over} = {o.loc[ids].iloc[0]:g} in every trial used")
            return r
        fixed = {c.over} | set(c.within)
        axes = [q for q in self.axes if q not in fixed and q in self.done.columns
                and not self._determines(q, o, ids)]
        groups = [g for g in self._keys(ids, axes).values() if o.loc[g].nunique() >= 2]
        if not groups:
            r.notes.append(f"no group of {', '.join(axes)} varies {c.over}: pin what moves it with within:")
            return r
        r.used = sorted(t for g in groups for t in g)
        kind = c.statistic
        per = [float(cs.trend_stat(o.loc[g].to_numpy(), v.loc[g].to_numpy()[None, :], kind)[0]) for g in groups]
        r.notes.append(f"{len(groups)} group(s) of {', '.join(axes) or 'all trials'}, {len(r.used)} trials")
        seeds = self.seeds(r.used) if "seed" in axes else 1
        if seeds >= 2 and len(groups) >= 3:
            return r.set(*cs.bootstrap_mean(per, self.n_boot, self.seed), len(groups), "groups",
                         f"{kind}, bootstrap over groups")
        found = self.outcomes.lookup(c.metric, v.loc[r.used])
        if not isinstance(found, str):
            if all(len({found[t].examples for t in g}) == 1 for g in groups):
                r.notes.append(ONE_SEED)
                gs = [(o.loc[g].to_numpy(), [found[t] for t in g]) for g in groups]
                return r.set(*bootstrap_trend(gs, kind, self.n_boot, self.seed), "examples",
                             f"{kind}, bootstrap over examples")
            found = "the trials of a group were evaluated on different examples"
        if len(groups) >= 3:
            r.notes.append(f"one seed and {found}: groups of the other axes as replicates")
            return r.set(*cs.bootstrap_mean(per, self.n_boot, self.seed), len(groups), "groups",
                         f"{kind}, bootstrap over groups")
        r.effect = float(np.mean(per))
        r.notes.append(f"too few: {len(groups)} group(s) on one seed, and {found}")
        return r

    def _determines(self, q: str, o: pd.Series, ids) -> bool:
        """Whether axis q fixes `over` among `ids` (each q value goes with one over value)."""
        col = self.done.loc[ids, q].map(_norm)
        return col.nunique() > 1 and bool((o.loc[ids].groupby(col).nunique() <= 1).all())

    # -------------------------------------------------------------------- rows

    def row(self, claim: ClaimSpec) -> dict:
        body = claim.body
        try:
            r = self.compare(body) if claim.kind == "compare" else self.trend(body)
        except StudyError as e:
            r = Result(notes=[e.raw])
        sels = ([{**body.within, **body.a}, {**body.within, **body.b}] if claim.kind == "compare"
                else [body.within])
        missing = self.not_completed(*sels)
        if missing:
            r.notes.append(f"{missing} selected trial(s) failed or pending, not used")
        bad, flags = self.health(r.used) if r.used else (0, "")
        if bad:
            r.notes.append(f"{bad} of {len(r.used)} trials used flagged unhealthy ({flags})")
        metric = body.metric if claim.kind == "trend" or body.versus is None else f"{body.metric} vs {body.versus}"
        stat = ("mean difference a − b" if claim.kind == "compare" else cs.STAT_NAMES[body.statistic])
        return {"claim": claim.name, "kind": claim.kind, "metric": metric, "expect": body.expect,
                "margin": body.margin if body.margin is not None else math.nan,
                "verdict": cs.verdict(body.expect, r.lo, r.hi, body.margin), "effect": r.effect, "lo": r.lo,
                "hi": r.hi, "n": r.n, "unit": r.unit, "test": r.test, "statistic": stat, "p": r.p,
                "unhealthy": bad, "note": "; ".join(r.notes), "about": claim.about}


def parse_claims(entries) -> list[ClaimSpec]:
    try:
        return [ClaimSpec.model_validate(c) for c in entries or []]
    except Exception as e:  # noqa: BLE001 - a hand-edited study.json: say where, not a traceback
        raise StudyError(f"cannot read the claims recorded in study.json ({e})", path="claims",
                         hint="run the study again (`raystudy run`) to record them anew") from None


def evaluate_claims(tables: Tables, claims: list | None = None, outcomes: pd.DataFrame | None = None, *,
                    n_boot: int = cs.N_BOOT, seed: int = 0) -> pd.DataFrame:
    """One verdict row per claim (COLUMNS); claims default to those recorded in study.json."""
    specs = parse_claims(tables.plan.get("claims") if claims is None else claims)
    # Config columns a claim reads from study.json are added to a copy, not the caller's tables.
    tables = replace(tables, trials=tables.trials.copy(), added=list(tables.added))
    if outcomes is None and Path(tables.path).is_dir():
        outcomes = load_outcomes(tables.path)
    study = Claims(tables, outcomes, n_boot, seed)
    return pd.DataFrame([study.row(c) for c in specs], columns=COLUMNS)


def write_claims(results_dir: str | Path, **kw) -> pd.DataFrame | None:
    """Recompute the claims of a results folder into claims.parquet; None when it declares none."""
    tables = load(results_dir)
    if not tables.plan.get("claims"):
        # The study file no longer declares claims: verdicts of an earlier version would mislead.
        Path(Layout(results_dir) / CLAIMS).unlink(missing_ok=True)
        return None
    df = evaluate_claims(tables, **kw)
    write_atomic(df, Layout(results_dir) / CLAIMS)
    return df
