"""Study-level steps that run after every trial has finished (`after:` in a study).

    after:
      - transfer: {attacks: [pgd, fgsm], eps: 0.1, n: 500}

`transfer` (SGR paper, Sec. 4.4 and its transfer tables): adversarial examples crafted
on each trained model (the source) are fed to every model of the study (the target);
the diagonal is each model's white-box accuracy. Writes results/<study>/transfer.parquet
with one row per (source_trial, target_trial, attack, eps).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import pandas as pd
import torch
from pydantic import Field, ValidationError, field_validator

from .errors import StudyError, pydantic_errors, raise_all
from .layout import PLAN, TRANSFER, TRIALS, Layout
from .registry import AFTER_STEPS, SECTIONS, Options
from .results import write_atomic
from .spec.types import Eps
from .spec.validate import validate_trial


class TransferOptions(Options):
    attacks: list[Literal["pgd", "fgsm"]] = Field(default_factory=lambda: ["pgd", "fgsm"], min_length=1)
    eps: list[Eps] = Field(default_factory=lambda: [0.1], min_length=1)
    n: int = Field(500, ge=1, description="test images (the seeded subset the metrics use)")
    steps: int = Field(40, ge=1, description="PGD iterations")
    alpha: Eps | None = Field(None, description="PGD step size (default 2.5 * eps / steps)")
    random_start: bool = True
    seed: int = 0
    batch_size: int = Field(500, ge=1)
    device: str = "auto"

    @field_validator("eps", mode="before")
    @classmethod
    def _listify(cls, v):
        return v if isinstance(v, list) else [v]


def _after_items(entries: list[Any]) -> tuple[list[tuple[str, Options]], list[StudyError]]:
    """`after:` items (`- transfer: {...}` or `- transfer`) -> ([(name, options)], errors)."""
    out: list[tuple[str, Options]] = []
    errors: list[StudyError] = []
    for i, item in enumerate(entries or []):
        path = f"after.{i}"
        if isinstance(item, str):
            name, opts = item, {}
        elif isinstance(item, dict) and len(item) == 1:
            name, opts = next(iter(item.items()))
            opts = {} if opts is None else opts
        else:
            errors.append(StudyError("each after item is a step name or {name: {options}}", path=path,
                                     expected="e.g. '- transfer: {attacks: [pgd, fgsm], eps: 0.1, n: 500}'"))
            continue
        try:
            schema = AFTER_STEPS.get(str(name), path=path).schema
        except StudyError as e:
            errors.append(e)
            continue
        if not isinstance(opts, dict):
            errors.append(StudyError(f"options of '{name}' must be a mapping", path=f"{path}.{name}",
                                     expected="e.g. {attacks: [pgd], eps: 0.1}"))
            continue
        try:
            out.append((name, schema.model_validate(opts)))
        except ValidationError as e:
            errors.extend(pydantic_errors(e, schema, file=None, prefix=f"{path}.{name}"))
    return out, errors


@SECTIONS.register("after")
def after_errors(entries: list[Any]) -> list[StudyError]:
    """Errors of a study's `after:` section (empty: valid); paths read after.<i>.<step>.<key>."""
    return _after_items(entries)[1]


def validate_after(entries: list[Any], file: str | None = None) -> list[tuple[str, Options]]:
    """`after:` items -> [(name, options)]; every problem is a StudyError naming the file and
    the dotted path (all of them at once)."""
    steps, errors = _after_items(entries)
    raise_all([e.located(file=file) for e in errors])
    return steps


def run_after_steps(study_doc, out_dir: str | Path) -> dict[str, Path]:
    """Run the study's `after:` steps on a finished results folder; returns {step: file}.

    `study_doc` is a StudyDocument (or a StudySpec, or the study's dict).
    """
    spec = getattr(study_doc, "spec", study_doc)
    after = spec.get("after", []) if isinstance(spec, dict) else spec.after
    file = getattr(study_doc, "file", None)
    written: dict[str, Path] = {}
    for name, opts in validate_after(after, file):
        written[name] = AFTER_STEPS.get(name).obj(Path(out_dir), opts)
    return written


# ------------------------------------------------------------------------- models

def load_trial_model(config: dict, weights: Path, device: torch.device):
    """Rebuild a trial's model from its config and load its final weights (eval mode)."""
    from .data import load
    from .models import build_model
    parsed = validate_trial(config)
    bundle = load(parsed.cfg.data)
    model = build_model(parsed.model, bundle.info).to(device)
    state = torch.load(weights, map_location=device, weights_only=True)
    # Final weights are saved after model.eval(); escnn models carry eval-mode buffers
    # then (PITFALLS: save and load in the same mode), so load in eval mode first.
    model.eval()
    try:
        model.load_state_dict(state)
    except RuntimeError:
        model.train()
        model.load_state_dict(state)
        model.eval()
    return model, bundle


def _completed_models(out_dir: Path, device: torch.device):
    layout = Layout(out_dir)
    if not (layout / TRIALS).exists() or not (layout / PLAN).exists():
        raise StudyError(f"no finished study in '{out_dir}' ({TRIALS} and {PLAN} are needed)",
                         hint="run the study first")
    plan = {t["trial_id"]: t for t in layout.read_plan()["trials"]}
    models = []
    for r in layout.records(TRIALS):
        if r.get("status") != "completed" or r["trial_id"] not in plan:
            continue
        weights = layout.final_weights(r["trial_id"], named=r.get("checkpoint"))
        if weights is None:
            print(f"raystudy: transfer: no final checkpoint for trial {r['trial_id']}: skipped", flush=True)
            continue
        model, bundle = load_trial_model(plan[r["trial_id"]]["config"], weights, device)
        models.append((r["trial_id"], plan[r["trial_id"]], model, bundle))
    return models


# ----------------------------------------------------------------------- transfer

def trial_label(trial: dict) -> str:
    """A short name for a trial in the matrix: its `label` space entry if the study has
    one, else its varied values (a varied method shows as its name)."""
    params = trial.get("params", {})
    if "label" in params:
        return str(params["label"])
    parts = [f"{k}={v.get('name', v) if isinstance(v, dict) else v}" for k, v in params.items()]
    return ", ".join(parts) or trial["trial_id"]


def craft(model, x, y, name: str, eps: float, o: TransferOptions) -> torch.Tensor:
    """Adversarial examples on one (source) model (raystudy.attacks: torchattacks, seeded)."""
    from .attacks import attack
    hp = {"steps": o.steps, "alpha": o.alpha, "random_start": o.random_start} if name == "pgd" else {}
    return attack(model, name, x, y, eps, batch_size=o.batch_size, seed=o.seed, **hp)


@AFTER_STEPS.register("transfer", TransferOptions)
def run_transfer(out_dir: Path, o: TransferOptions) -> Path | None:
    """The transfer matrix: accuracy of every target model on every source model's
    adversarial examples (SGR paper's white-box / transfer tables)."""
    from .execute import pick_device
    from .metrics.base import EvalContext, predict
    device = pick_device(o.device)
    models = _completed_models(out_dir, device)
    if not models:
        print("raystudy: transfer: no completed trial with a final checkpoint; nothing written", flush=True)
        return None
    info0 = models[0][3].info
    for tid, _, _, b in models[1:]:
        i = b.info
        if (i.channels, i.height, i.width, i.num_classes) != (info0.channels, info0.height, info0.width,
                                                             info0.num_classes):
            raise StudyError(f"trial {tid} has inputs/classes {i} unlike {models[0][0]}: "
                             "transfer needs one input space", path="after.transfer")
    data = models[0][3].to(device)
    x, y = EvalContext(model=None, data=data, device=device).subset("test", o.n)
    clean = {tid: (predict(m, x, o.batch_size) == y).float().mean().item() for tid, _, m, _ in models}
    label = {tid: trial_label(t) for tid, t, _, _ in models}
    rows = []
    for src, _, src_model, _ in models:
        for attack in o.attacks:
            for eps in o.eps:
                x_adv = craft(src_model, x, y, attack, eps, o)
                for tgt, _, tgt_model, _ in models:
                    acc = (predict(tgt_model, x_adv, o.batch_size) == y).float().mean().item()
                    rows.append({"source_trial": src, "target_trial": tgt, "attack": attack, "eps": float(eps),
                                 "accuracy": acc, "white_box": src == tgt, "target_clean_accuracy": clean[tgt],
                                 "source_label": label[src], "target_label": label[tgt], "n": len(x)})
    path = Path(out_dir) / TRANSFER
    write_atomic(pd.DataFrame(rows), path)
    print(f"raystudy: transfer: {len(models)} models x {len(o.attacks)} attacks x {len(o.eps)} eps -> {path}",
          flush=True)
    return path

