"""Read a results folder into pandas tables (never Ray objects).

Works while a study is still running or after some trials failed: the tables
are rewritten atomically by `raystudy.results.ResultStore`, and trials that the
plan (study.json) lists but the tables do not yet hold appear with status
"pending", so a report shows what is missing instead of silently omitting it.

Value references (used by charts and the report grammar) name one number per trial:
  "accuracy"                    a column of trials.parquet
  "robustness.pgd@8/255"        the `accuracy` of the curve row with metric robustness.pgd at x = 8/255
  "invariance.rotation@180:consistency"   another value column of that curve row
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from raystudy.errors import StudyError, suggest
from raystudy.layout import CURVES, EPOCHS, PLAN, TABLES, TRIALS, Layout
from raystudy.results import STANDARD_COLUMNS, config_columns

# trials.parquet columns that are bookkeeping, not configuration or results.
META_COLUMNS = {"trial_id", "status", "error", "runs", "experiment_tag", "device", "data_source",
                "epochs_run", "label", "resumed_from_epoch", "epoch_reports", "health.ok", "health.flags"}
# Provenance (raystudy.provenance): which code and machine made a row, never a metric.
PROVENANCE_PREFIXES = ("code.", "env.")


@dataclass
class Tables:
    """The tables of one results folder.

    trials: one row per planned trial (status completed / error / pending / ...),
            config columns with dotted names, scalar metrics.
    curves: long format: trial_id, metric, x, value columns (accuracy, consistency, density, ...).
    epochs: per-epoch training logs: trial_id, epoch, loss, lr, val_accuracy, ...
    extra:  any other `<name>.parquet` in the folder (e.g. transfer.parquet), by name.
    """

    path: Path
    name: str
    trials: pd.DataFrame
    curves: pd.DataFrame
    epochs: pd.DataFrame
    plan: dict = field(default_factory=dict)
    extra: dict[str, pd.DataFrame] = field(default_factory=dict)
    # Fixed config values added as columns on demand (add_config_column).
    added: list[str] = field(default_factory=list)

    @property
    def report(self) -> list[dict]:
        return list(self.plan.get("report") or [])

    @property
    def varied(self) -> list[str]:
        """Config paths the study varies (its space keys), in plan order."""
        keys: list[str] = []
        for t in self.plan.get("trials", []):
            for k in t.get("params", {}):
                if k not in keys:
                    keys.append(k)
        if not keys:
            keys = [c for c in self.trials.columns if "." in c and c in STANDARD_COLUMNS]
        return [k for k in keys if k in self.trials.columns]

    def add_config_column(self, path: str) -> bool:
        """Add the config value at `path` (e.g. train.optimizer.momentum) as a column, read from
        each trial's config in study.json. trials.parquet holds only what the study varies, but a
        chart may facet or colour by a value that a profile holds fixed: it then gets one facet.
        True when every trial that study.json lists has the path."""
        from raystudy.spec.paths import get_path, has_path
        if path in self.trials.columns:
            return True
        cfgs = {t["trial_id"]: t.get("config", {}) for t in self.plan.get("trials", [])}
        # A trial recorded by an earlier run of a narrower plan (a `--set` pin) may be missing
        # from study.json: its value is unknown (None), not a reason to drop the chart.
        known = [tid for tid in self.trials["trial_id"] if tid in cfgs]
        if not known or not all(has_path(cfgs[tid], path) for tid in known):
            return False
        vals = [get_path(cfgs[tid], path) if tid in cfgs else None for tid in self.trials["trial_id"]]
        if any(isinstance(v, (dict, list)) for v in vals):
            return False
        self.trials[path] = vals
        self.added.append(path)
        return True

    @property
    def config_columns(self) -> list[str]:
        cols = list(self.varied)
        cols += [c for c in STANDARD_COLUMNS if c in self.trials.columns and c not in cols]
        cols += [c for c in self.added if c not in cols]
        return cols

    @property
    def metric_columns(self) -> list[str]:
        """Numeric per-trial results (accuracy, hessian.top1, timings, ...)."""
        skip = set(self.config_columns) | META_COLUMNS
        return [c for c in self.trials.columns
                if c not in skip and not c.startswith(PROVENANCE_PREFIXES)
                and pd.api.types.is_numeric_dtype(self.trials[c])]

    @property
    def completed(self) -> pd.DataFrame:
        return self.trials[self.trials["status"] == "completed"]

    def counts(self) -> dict[str, int]:
        return {str(k): int(v) for k, v in self.trials["status"].value_counts().items()}

    def curves_with_config(self, columns: list[str] | None = None) -> pd.DataFrame:
        """Curve rows joined with the trials' config columns and label (a tidy join)."""
        cols = ["trial_id", "label", "status", *(columns if columns is not None else self.config_columns)]
        cols = list(dict.fromkeys(c for c in cols if c in self.trials.columns))
        right = self.trials[cols]
        dup = [c for c in cols if c in self.curves.columns and c != "trial_id"]
        return self.curves.drop(columns=dup).merge(right, on="trial_id", how="inner")

    def epochs_with_config(self) -> pd.DataFrame:
        cols = list(dict.fromkeys(["trial_id", "label", *self.config_columns]))
        right = self.trials[[c for c in cols if c in self.trials.columns]]
        dup = [c for c in right.columns if c in self.epochs.columns and c != "trial_id"]
        return self.epochs.drop(columns=dup).merge(right, on="trial_id", how="inner")

    def values(self, refs: list[str], *, completed_only: bool = True,
               paths: list[str] | None = None) -> pd.DataFrame:
        """Trials with one column per value reference (see the module docstring);
        `paths` (one per ref) locate errors, e.g. report.2.y."""
        df = self.completed if completed_only else self.trials
        df = df.copy()
        for ref, path in zip(refs, paths or refs):
            if ref not in df.columns:
                df[ref] = resolve(self, ref, path=path).reindex(df["trial_id"]).to_numpy()
        return df


def parse_x(text: str) -> float:
    """'8/255' -> 0.0313..., '180' -> 180.0 (the x of a curve point)."""
    try:
        return float(Fraction(text.strip())) if "/" in text else float(text)
    except (ValueError, ZeroDivisionError):
        raise StudyError(f"cannot read '{text}' as a number", expected="a number or a fraction like 8/255") from None


def split_ref(ref: str) -> tuple[str, float | None, str]:
    """'robustness.pgd@8/255:consistency' -> ('robustness.pgd', 0.0313..., 'consistency')."""
    if "@" not in ref:
        return ref, None, ""
    metric, _, rest = ref.partition("@")
    xtxt, _, col = rest.partition(":")
    return metric, parse_x(xtxt), col or "accuracy"


def resolve(tables: Tables, ref: str, path: str | None = None) -> pd.Series:
    """One value per trial_id for a value reference; a clear error if it names nothing."""
    path = path or ref
    metric, x, col = split_ref(ref)
    if x is None:
        if ref in tables.trials.columns:
            return pd.to_numeric(tables.trials.set_index("trial_id")[ref], errors="coerce")
        known = tables.metric_columns + [f"{m}@<x>" for m in sorted(curve_metrics(tables))]
        best = suggest(ref, known)
        raise StudyError(f"no column '{ref}' in trials.parquet", path=path,
                         expected="one of: " + ", ".join(known[:40]) if known else "a metric column",
                         hint=f"did you mean '{best}'?" if best else "has any trial that measures it finished?")
    cur = tables.curves
    rows = cur[cur["metric"] == metric] if "metric" in cur.columns else cur.iloc[0:0]
    if rows.empty:
        known = sorted(curve_metrics(tables))
        best = suggest(metric, known)
        raise StudyError(f"no curve '{metric}' in curves.parquet", path=path,
                         expected="one of: " + ", ".join(known) if known else "a curve metric",
                         hint=f"did you mean '{best}'?" if best else "has any trial that measures it finished?")
    if col not in rows.columns:
        vals = [c for c in rows.columns if c not in ("trial_id", "metric", "x")]
        raise StudyError(f"curve '{metric}' has no value column '{col}'", path=path,
                         expected="one of: " + ", ".join(vals))
    xs = pd.to_numeric(rows["x"], errors="coerce").to_numpy(dtype=float)
    hit = rows[np.isclose(xs, x, rtol=1e-4, atol=1e-9)]
    if hit.empty:
        have = ", ".join(f"{v:g}" for v in sorted(set(xs[~np.isnan(xs)]))[:20])
        raise StudyError(f"curve '{metric}' has no point at x = {x:g}", path=path, expected=f"one of: {have}")
    return pd.to_numeric(hit.groupby("trial_id")[col].mean(), errors="coerce")


def curve_metrics(tables: Tables) -> set[str]:
    return set(tables.curves["metric"].dropna().unique()) if "metric" in tables.curves.columns else set()


def short_name(path: str) -> str:
    """train.augment.rotation -> rotation; train.method.name -> method (a 'name' says nothing)."""
    parts = path.split(".")
    return parts[-2] if parts[-1] == "name" and len(parts) > 1 else parts[-1]


def config_label(row: pd.Series, keys: list[str]) -> str:
    """'lr=0.1, batch_size=64': the values of `keys` in a row (missing ones left out), or 'all'."""
    parts = []
    for k in keys:
        v = row.get(k)
        if v is None or (isinstance(v, float) and math.isnan(v)):
            continue
        parts.append(f"{short_name(k)}={v:g}" if isinstance(v, float) else f"{short_name(k)}={v}")
    return ", ".join(parts) or "all"


def load(results_dir: str | Path) -> Tables:
    """The tables of `results/<study>/`; pending trials of the plan appear with status 'pending'."""
    out = Path(results_dir)
    if not out.is_dir():
        raise StudyError(f"no results folder '{out}'", path="DIR",
                         hint="give a folder such as results/quickstart (made by `raystudy run`)")
    layout = Layout(out)
    plan: dict[str, Any] | None = layout.read_plan()
    if plan is None and not (layout / TRIALS).exists():
        raise StudyError(f"no study results in '{out}' (neither {PLAN} nor {TRIALS})", path="DIR",
                         hint="give a folder such as results/quickstart")
    plan = plan or {}
    trials = layout.read_table(TRIALS, ["trial_id", "status", "error"])
    curves = layout.read_table(CURVES, ["trial_id", "metric", "x"])
    epochs = layout.read_table(EPOCHS, ["trial_id", "epoch"])
    plan_trials = plan.get("trials", [])
    seen = set(trials["trial_id"]) if len(trials) else set()
    pending = [{"trial_id": t["trial_id"], "status": "pending", "error": None, **config_columns(t)}
               for t in plan_trials if t["trial_id"] not in seen]
    if pending:
        trials = pd.concat([trials, pd.DataFrame(pending)], ignore_index=True) if len(trials) \
            else pd.DataFrame(pending)
    # Plan order, so tables and legends follow the study file.
    order = {t["trial_id"]: i for i, t in enumerate(plan_trials)}
    if order and len(trials):
        trials = trials.assign(_o=trials["trial_id"].map(order).fillna(len(order))) \
            .sort_values("_o", kind="stable").drop(columns="_o").reset_index(drop=True)
    extra = {p.stem: layout.read_table(p.name) for p in sorted(out.glob("*.parquet")) if p.name not in TABLES}
    tables = Tables(path=out, name=plan.get("name", out.name), trials=trials, curves=curves,
                    epochs=epochs, plan=plan, extra=extra)
    keys = [k for k in tables.varied if k not in ("seed", "label")]
    made = [config_label(r, keys) for _, r in tables.trials.iterrows()] if len(trials) else []
    if "label" in tables.trials.columns and tables.trials["label"].notna().any():
        # The study named its rows itself (a free variable `label`): keep those names.
        tables.trials["label"] = tables.trials["label"].where(tables.trials["label"].notna(), made)
    else:
        tables.trials["label"] = made
    return tables
