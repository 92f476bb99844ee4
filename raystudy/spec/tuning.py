"""Checks of the study-level `tune.search`, `tune.scheduler` and `tracking` sections against
the rest of the study (its space, metrics and epochs), run when a study is loaded so that
`raystudy validate` catches them. Imports neither Ray nor the trackers (Optuna only to build
a sampler); the schema is spec/tunespec.py, the Ray side raystudy.search and raystudy.tracking.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from ..errors import StudyError, raise_all, suggest
from .space import ONLY, _operator
from .tunespec import SchedulerSpec, SearchSpec

# Space operators a searcher can take; the values it proposes replace the expansion.
SEARCHABLE = ("grid", "choice", "uniform", "loguniform", "randint")
# What every trial reports at its end besides its metrics (execute.run_trial).
RUN_SCALARS = ("epochs_run", "final_loss", "num_params", "train_time_s", "eval_time_s", "wall_time_s")
# What every epoch reports (train._run_epoch); methods add train_* accuracies and method.* values.
EPOCH_SCALARS = ("loss", "val_accuracy", "train_acc", "train_adv_acc", "lr", "epoch_time_s",
                 "images_per_s", "train_images_per_s")
EPOCH_PREFIXES = ("train_", "method.")


# ---------------------------------------------------------------------- checks

def _needs(module: str, what: str, path: str, file: str) -> list[StudyError]:
    if importlib.util.find_spec(module) is None:
        return [StudyError(f"{what} needs the '{module}' package, which is not installed", file=file, path=path,
                           hint='pip install -e ".[tune,tracking]" (or make install)')]
    return []


def searched_entries(space: dict, file: str) -> dict[str, tuple[str, Any]]:
    """{space key: (operator, argument)} of the entries a searcher varies; refuses the rest."""
    out: dict[str, tuple[str, Any]] = {}
    errs: list[StudyError] = []
    for key, entry in (space or {}).items():
        key = str(key)
        op, arg = _operator(key, entry, file)
        path = f"space.{key}"
        if op == "expr":
            errs.append(StudyError(
                "an 'expr' entry cannot be searched: the searcher proposes every value it varies on its own, and a "
                "value derived from others is not a dimension it can learn", file=file, path=path,
                hint="search the value directly (e.g. {loguniform: [lo, hi]}), or run this space without tune.search"))
        elif op == "zip":
            rows = len(next(iter(v for p, v in arg.items() if p != ONLY))) if isinstance(arg, dict) and arg else 0
            errs.append(StudyError(
                "a 'zip' entry cannot be searched: its paths vary together as rows of a table, which Optuna's "
                "independent distributions cannot express", file=file, path=path,
                hint=f"pin one row with --set {key}=I (I in 0..{max(rows - 1, 0)}), or run the zip without tune.search"))
        elif op in SEARCHABLE:
            if key == "seed" or key.startswith("data.") or key.startswith("train.init_from"):
                why = ("a searcher would tune the seed as if it were a hyperparameter" if key == "seed" else
                       "the data (and warm-start weights) are loaded once before Ray starts")
                errs.append(StudyError(f"'{key}' cannot be searched: {why}", file=file, path=path,
                                       hint=f"fix it (--set {key}=VALUE) and run the search once per value"))
            else:
                out[key] = (op, arg)
    raise_all(errs)
    if not out:
        raise StudyError("tune.search has nothing to search: the space has no grid, choice, uniform, loguniform "
                         "or randint entry", file=file, path="tune.search",
                         hint="add e.g. `train.optimizer.lr: {loguniform: [0.001, 0.1]}` to space")
    return out


def final_scalars(parsed) -> tuple[set[str], set[str] | None]:
    """(exact names, name prefixes) of the scalars a trial reports at its end. A metric that
    declares its outputs (the metric template's `outputs(options)`) gives exact names; one that
    does not gives its name and the first word of its name as prefixes (`boundary_distance` ->
    `boundary.*`), so the check never refuses a name such a metric may produce."""
    exact: set[str] = set(RUN_SCALARS)
    prefixes: set[str] = set()
    for m in parsed.metrics:
        outputs = getattr(m.obj, "outputs", None)
        try:
            exact.update(outputs(m.options)[0])
            continue
        except Exception:  # noqa: BLE001 - no (usable) declaration: fall back to prefixes
            pass
        prefixes.update({m.name, m.name.split("_")[0]})
        if m.name == "invariance":
            prefixes.add("spatial_accuracy")
    return exact, prefixes or None


def _known(name: str, exact: set[str], prefixes) -> bool:
    return name in exact or any(name == p or name.startswith(p + ".") for p in prefixes or ())


def _check_metric(name: str, parsed, path: str, file: str) -> list[StudyError]:
    exact, prefixes = final_scalars(parsed)
    if _known(name, exact, prefixes):
        return []
    per_epoch = name in EPOCH_SCALARS
    best = suggest(name, sorted(exact | set(prefixes or ())))
    return [StudyError(f"'{name}' is not a scalar the trials report at their end"
                       + (" (it is reported per epoch: a scheduler can use it)" if per_epoch else ""),
                       file=file, path=path,
                       expected="a metric scalar such as " + ", ".join(sorted(exact)[:8])
                       + (" or a name under " + ", ".join(f"{p}.*" for p in sorted(prefixes)) if prefixes else ""),
                       hint=f"did you mean '{best}'?" if best else "add the metric to `evaluate`")]


def make_sampler(search: SearchSpec, seed: int, file: str | None = None):
    """The Optuna sampler `tune.search` names, seeded, with its `options`."""
    import optuna
    samplers = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler,
                "nsga2": optuna.samplers.NSGAIISampler, "cmaes": optuna.samplers.CmaEsSampler}
    cls = samplers[search.sampler]
    try:
        return cls(seed=seed, **search.options)
    except (TypeError, ValueError) as e:
        raise StudyError(f"the {search.sampler} sampler refuses these options ({e})", file=file,
                         path="tune.search.options",
                         hint=f"see optuna.samplers.{cls.__name__} for its keyword arguments") from None


def _check_search(study, search: SearchSpec) -> list[StudyError]:
    file, spec = study.file, study.spec
    errs = _needs("optuna", "tune.search", "tune.search.name", file)
    try:
        searched_entries(spec.space, file)
    except StudyError as e:
        errs += getattr(e, "errors", [e])
    if spec.tune.num_samples != 1:
        errs.append(StudyError("tune.num_samples repeats the space's random draws; with tune.search the budget is "
                               "tune.search.num_samples", file=file, path="tune.num_samples",
                               hint="remove tune.num_samples (or set it to 1)"))
    if not errs:
        try:
            make_sampler(search, 0, file)
        except StudyError as e:
            errs.append(e)
    if search.sampler == "cmaes" and len(search.metrics) > 1:
        errs.append(StudyError("the cmaes sampler optimizes one metric", file=file, path="tune.search.sampler",
                               hint="use nsga2 (or tpe) for several metrics"))
    parsed = next(iter(study.plan.parsed.values()), None)
    if parsed is not None:
        for i, m in enumerate(search.metrics):
            errs += _check_metric(m, parsed, "tune.search.metric" + (f".{i}" if isinstance(search.metric, list) else ""),
                                  file)
    return errs


def trial_epochs(config: dict) -> int:
    train = config.get("train", {})
    stages = train.get("stages")
    return sum(int(s.get("epochs", 0)) for s in stages) if stages else int(train.get("epochs", 0))


def max_epochs(study) -> int:
    """The most epochs any trial of the study may run (a searched train.epochs included)."""
    most = max((trial_epochs(t.config) for t in study.trials), default=0)
    entry = (study.spec.space or {}).get("train.epochs")
    if study.spec.tune.search is not None and isinstance(entry, dict) and len(entry) == 1:
        (op, arg), = entry.items()
        if op in ("grid", "choice") and all(isinstance(v, int) for v in arg):
            most = max([most, *arg])
        elif op in ("randint", "uniform", "loguniform") and isinstance(arg, list) and len(arg) == 2:
            most = max(most, int(arg[1]))
    return most


def _check_scheduler(study, sched: SchedulerSpec) -> list[StudyError]:
    file, errs = study.file, []
    other = {"asha": ("min_samples_required",), "median": ("reduction_factor", "brackets")}[sched.name]
    for opt in other:
        if getattr(sched, opt) is not None:
            errs.append(StudyError(f"'{opt}' is not an option of the '{sched.name}' scheduler", file=file,
                                   path=f"tune.scheduler.{opt}", hint="remove it"))
    m = sched.metric
    if m not in EPOCH_SCALARS and not m.startswith(EPOCH_PREFIXES):
        best = suggest(m, EPOCH_SCALARS)
        errs.append(StudyError(f"'{m}' is not reported every epoch, so a scheduler cannot compare trials on it",
                               file=file, path="tune.scheduler.metric", expected="one of: " + ", ".join(EPOCH_SCALARS),
                               hint=f"did you mean '{best}'?" if best else "use val_accuracy or loss"))
    trials = study.trials
    if m == "val_accuracy" and any(t.config.get("data", {}).get("val_fraction", 0.1) == 0 for t in trials):
        errs.append(StudyError("val_accuracy needs a validation split, and data.val_fraction is 0", file=file,
                               path="tune.scheduler.metric", hint="set data.val_fraction (e.g. 0.1) or use loss"))
    epochs = max_epochs(study)
    if trials and sched.grace_period >= epochs:
        errs.append(StudyError(f"grace_period {sched.grace_period} leaves no epoch to stop at (trials run {epochs})",
                               file=file, path="tune.scheduler.grace_period",
                               expected=f"fewer than {epochs} epochs"))
    return errs


def check_tuning(study) -> None:
    """Every mistake in tune.search, tune.scheduler and tracking, before Ray starts."""
    spec, file = study.spec, study.file
    errs: list[StudyError] = []
    if spec.tune.search is not None:
        errs += _check_search(study, spec.tune.search)
    if spec.tune.scheduler is not None:
        errs += _check_scheduler(study, spec.tune.scheduler)
    tr = spec.tracking
    if tr.tensorboard:
        errs += _needs("tensorboardX", "tracking.tensorboard", "tracking.tensorboard", file)
    if tr.mlflow is not None:
        errs += _needs("mlflow", "tracking.mlflow", "tracking.mlflow", file)
    if tr.wandb is not None:
        errs += _needs("wandb", "tracking.wandb", "tracking.wandb", file)
    raise_all(errs)
