"""Run one trial end to end, without Ray: data -> model -> fit -> metrics.

`trainable.py` wraps this for Ray Tune; tests and benchmarks call it directly.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Protocol

import torch

from .bestepoch import BestEpoch
from .health import HealthOptions
from .metrics.base import EvalContext
from .models import build_model, count_parameters
from .provenance import environment
from .spec.selection import VAL_PREFIX, val_options
from .spec.validate import validate_trial
from .stats import encode
from .train import fit
from .training_health import training_checks


class Reporter(Protocol):
    def epoch(self, metrics: dict, get_state: Callable[[], dict]) -> None: ...
    def final(self, metrics: dict) -> None: ...
    def restore(self) -> dict | None: ...


class NullReporter:
    def __init__(self):
        self.epochs: list[dict] = []
        self.result: dict | None = None

    def epoch(self, metrics, get_state):
        self.epochs.append(metrics)

    def final(self, metrics):
        self.result = metrics

    def restore(self):
        return None


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def json_safe(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if torch.is_tensor(v):
        return v.item() if v.numel() == 1 else v.tolist()
    return v


def evaluate(parsed, model, data, device, *, artifacts: Path | None = None,
             health: HealthOptions | None = None, outcomes: list | None = None) -> tuple[dict, list, dict]:
    """Run every declared metric; returns (scalars and text notes, curve rows, seconds per metric)
    and, given a list `outcomes`, appends the metrics' per-example outcomes to it. With `health`,
    metrics that have health checks (robustness, hessian) also measure them."""
    ctx = EvalContext(model=model, data=data, device=device, seed=parsed.cfg.seed,
                      batch_size=parsed.cfg.train.eval_batch_size, artifacts=artifacts, trial=parsed,
                      extra={"health": health} if health is not None else {})
    scalars: dict[str, Any] = {}
    curves: list[dict] = []
    timings: dict[str, float] = {}
    for m in parsed.metrics:
        res = m.obj(ctx, m.options)
        # A metric may be declared twice (fgsm and pgd robustness): add up its time.
        key = f"time.{m.name}_s"
        timings[key] = timings.get(key, 0.0) + res.seconds
        scalars.update(res.scalars)
        scalars.update(res.notes)
        curves.extend(res.curves)
        if outcomes is not None:
            outcomes.extend(res.outcomes)
    return scalars, curves, timings


def outcome_record(o: dict) -> dict:
    """One metric outcome in the JSON the final result carries: the boolean vectors packed
    (np.packbits) and base64-encoded, with their length n (raystudy.stats)."""
    con = o.get("consistent")
    return {"metric": o["metric"], "x": float(o["x"]), "n": len(o["correct"]), "examples": o["examples"],
            "correct": encode(o["correct"].cpu().numpy()),
            "consistent": None if con is None else encode(con.cpu().numpy())}


def due_every(options, epoch: int, last: int) -> bool:
    """Whether an `every_epochs: k` metric runs on the validation split after this (1-based)
    epoch: every k-th, and the last, so a selection always weighs the final weights too."""
    every = getattr(options, "every_epochs", None)
    return bool(every) and (epoch % every == 0 or epoch == last)


def _take(ctx: EvalContext, m, options, prefix: str, metrics: dict, rows: list[dict]) -> None:
    """Run metric `m` now; its scalars join the epoch's row (named `prefix` + scalar) and, like
    its curve rows, become `@epoch` curve rows tagged with the epoch."""
    e = metrics["epoch"]
    res = m.obj(ctx, options)
    key = f"time.{m.name}@epoch_s"
    metrics[key] = metrics.get(key, 0.0) + res.seconds
    scalars = {prefix + k: v for k, v in res.scalars.items()}
    metrics.update(scalars)
    rows.extend({"metric": f"{k}@epoch", "x": e, "x_title": "epoch", "value": v, "epoch": e}
                for k, v in scalars.items())
    rows.extend({**r, "metric": f"{prefix}{r['metric']}@epoch", "epoch": e} for r in res.curves)


def at_epochs_hook(parsed, model, data, device, on_epoch: Callable, *,
                   artifacts: Path | None = None) -> tuple[Callable, list[dict]]:
    """Wrap fit's epoch callback so metrics are also taken during training:

    * `at_epochs: [..]` (hessian): after those epochs, on the metric's own split, as Yao et al.
      track the spectrum during training; scalars keep their names (`hessian.top1`);
    * `every_epochs: k` (every metric): after every k-th epoch and the last, on the validation
      split (spec.selection), scalars named `val.<scalar>` (`val.robustness.pgd.auc`), so
      they never mix with the final test-split numbers and `train.select` can read them.

    Each scalar `k` becomes a curve row {metric: "k@epoch", x: epoch, x_title: "epoch", value,
    epoch}, each of the metric's own curve rows gets "@epoch" appended to its (prefixed) name
    and an `epoch` column; the scalars also ride on that epoch's report (epochs.parquet). The
    metric template restores the model's mode before training goes on. Rows live in memory:
    after a worker restart the earlier epochs' rows are only in epochs.parquet.
    """
    timed = [m for m in parsed.metrics
             if getattr(m.options, "at_epochs", None) or getattr(m.options, "every_epochs", None)]
    rows: list[dict] = []
    if not timed:
        return on_epoch, rows
    ctx = EvalContext(model=model, data=data, device=device, seed=parsed.cfg.seed,
                      batch_size=parsed.cfg.train.eval_batch_size, artifacts=artifacts, trial=parsed)
    last = sum(s.epochs for s in parsed.stages)

    def hooked(metrics: dict, get_state: Callable) -> None:
        e = metrics["epoch"]
        for m in timed:
            if e in (getattr(m.options, "at_epochs", None) or ()):
                _take(ctx, m, m.options, "", metrics, rows)
            if due_every(m.options, e, last):
                _take(ctx, m, val_options(m.options), VAL_PREFIX, metrics, rows)
        on_epoch(metrics, get_state)

    return hooked, rows


def run_trial(trial: dict, bundle, reporter: Reporter | None = None, *,
              artifacts: Path | None = None, init_state: dict | None = None,
              on_model: Callable | None = None) -> dict:
    """Train and evaluate one trial (`trial` as produced by spec.space.Trial.to_ray)."""
    reporter = reporter or NullReporter()
    t_start = time.perf_counter()
    parsed = validate_trial(trial["config"])
    cfg = parsed.cfg
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    data = bundle.to(device)
    model = _model(parsed, data, device, trial, init_state)
    if on_model is not None:
        on_model(model)
    resume = reporter.restore()
    t_train = time.perf_counter()
    best = BestEpoch.for_trial(parsed, model, resume)
    report = best.wrap(reporter.epoch) if best is not None else reporter.epoch
    on_epoch, epoch_curves = at_epochs_hook(parsed, model, data, device, report, artifacts=artifacts)
    fs = fit(parsed, model, data, device, on_epoch=on_epoch, resume=resume)
    # Evaluated, and saved as the final weights (model.pt), are the selected epoch's.
    selected = best.load_best() if best is not None else {}
    train_s = time.perf_counter() - t_train
    t_eval = time.perf_counter()
    model.eval()
    outcomes: list[dict] = []
    # The study's `health:` section rides beside the config (it is not part of the trial's id).
    health = HealthOptions.model_validate(trial.get("health") or {})
    scalars, curves, timings = evaluate(parsed, model, data, device, artifacts=artifacts, health=health,
                                        outcomes=outcomes)
    scalars.update(training_checks(fs.history, model, data, health, cfg.seed))
    curves = epoch_curves + curves
    eval_s = time.perf_counter() - t_eval
    final = {k: json_safe(v) for k, v in scalars.items()}
    final.update(timings)
    final.update({k: json_safe(v) for k, v in selected.items()})
    last = fs.history[-1] if fs.history else {}
    final.update({
        "final": True,
        "epochs_run": fs.epoch,
        "final_loss": json_safe(last.get("loss", float("nan"))),
        "num_params": count_parameters(model),
        "train_time_s": train_s,
        "eval_time_s": eval_s,
        "wall_time_s": time.perf_counter() - t_start,
        "device": str(device),
        "data_source": bundle.source,
        # Where it ran: package versions, host, device, the seed torch got (provenance).
        **environment(device, cfg.seed),
        # Curves travel with the final result so they reach the driver on any cluster.
        "_curves": json.dumps([{k: json_safe(v) for k, v in r.items()} for r in curves]),
        "_outcomes": json.dumps([outcome_record(o) for o in outcomes]),
    })
    reporter.final(final)
    return final


def _model(parsed, data, device, trial: dict, init_state: dict | None):
    """The trial's model on its device, with warm-start weights when it has any."""
    model = build_model(parsed.model, data.info).to(device)
    if init_state is None and parsed.cfg.train.init_from is not None:
        # `init_weights`: the source's model.pt, resolved by the driver when it planned the run.
        from .warmstart import load_init_state
        init_state = load_init_state(parsed.init_from, model, weights=trial.get("init_weights"))
    if init_state is not None:
        model.load_state_dict(init_state)
    return model


def set_threads(cpus: float) -> None:
    n = max(1, int(cpus))
    torch.set_num_threads(n)
    os.environ.setdefault("OMP_NUM_THREADS", str(n))
