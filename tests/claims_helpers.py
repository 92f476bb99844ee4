"""Recorded results folders with known effects, for the claims tests (no Ray, no torch): the
tables are written through the real ResultStore, study.json as `raystudy run` writes it, and
outcomes.parquet in the format of WAVE2.md (np.packbits bytes)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd

from raystudy.layout import OUTCOMES, PLAN
from raystudy.results import ResultStore, write_atomic, write_json_atomic


def trial(tid: str, params: dict, config: dict | None = None) -> dict:
    cfg = {"seed": params.get("seed", 0), "model": {"arch": "stdcnn_mnist"}, "data": {"dataset": "mnist"},
           "train": {"method": {"name": "natural"}, "optimizer": {"name": "sgd", "momentum": 0.0}}}
    for k, v in params.items():
        if "." in k:
            head, _, last = k.rpartition(".")
            node = cfg
            for part in head.split("."):
                node = node.setdefault(part, {})
            node[last] = v
    cfg.update(config or {})
    return {"trial_id": tid, "params": dict(params), "config": cfg}


def grid(**axes) -> list[dict]:
    """Every combination of the axes as params (in order)."""
    keys = list(axes)
    return [dict(zip(keys, combo)) for combo in itertools.product(*axes.values())]


def write_results(out: Path, rows: list[tuple[dict, dict]], *, claims: list[dict], axes: list[str],
                  curves: dict[str, list[dict]] | None = None, outcomes: list[dict] | None = None,
                  status: dict[str, str] | None = None) -> Path:
    """A results folder: rows = [(params, scalar results)], trial ids t0, t1, ...; `curves` and
    `status` by trial id; `outcomes` rows as in outcomes.parquet, with `correct` / `consistent`
    given as boolean arrays (packed here)."""
    out = Path(out)
    trials = [trial(f"t{i}", p) for i, (p, _) in enumerate(rows)]
    varied = sorted({k for p, _ in rows for k in p})
    write_json_atomic({"name": "claimstudy", "trials": trials, "claims": claims, "axes": axes, "varied": varied,
                       "report": []}, out / PLAN)
    store = ResultStore(out)
    for t, (_, res) in zip(trials, rows):
        st = (status or {}).get(t["trial_id"], "completed")
        result = {**res, "_curves": json.dumps((curves or {}).get(t["trial_id"], []))}
        store.record(t, st, result if st == "completed" else None, error=None if st == "completed" else "boom",
                     flush=False)
    store.flush()
    if outcomes is not None:
        packed = [{**o, "n": len(o["correct"]), "correct": np.packbits(np.asarray(o["correct"], bool)).tobytes(),
                   "consistent": (None if o.get("consistent") is None
                                  else np.packbits(np.asarray(o["consistent"], bool)).tobytes())}
                  for o in outcomes]
        write_atomic(pd.DataFrame(packed), out / OUTCOMES)
    return out


def vector(n_true: int, n: int, offset: int = 0) -> np.ndarray:
    """n booleans with n_true of them True starting at `offset` (wrapping)."""
    v = np.zeros(n, bool)
    v[(np.arange(n_true) + offset) % n] = True
    return v


def paired_vectors(n11: int, n10: int, n01: int, n00: int) -> tuple[np.ndarray, np.ndarray]:
    """Two outcome vectors with exactly these paired counts (a right & b right, a only, b only, neither)."""
    a = np.array([True] * n11 + [True] * n10 + [False] * n01 + [False] * n00)
    b = np.array([True] * n11 + [False] * n10 + [True] * n01 + [False] * n00)
    return a, b
