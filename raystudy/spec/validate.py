"""Validate one resolved trial config against the schema and every registry."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from ..errors import StudyError, StudyErrors, pydantic_errors, raise_all
from ..registry import DATASETS, METHODS, METRICS, MODELS, OPTIMIZERS, SCHEDULES, Registry
from .schema import AugmentSpec, DataSpec, InitFrom, TrialConfig, TrainSpec
from .selection import check_during_training

INIT_FROM = "train.init_from"


@dataclass
class Named:
    """A registry entry chosen by name, with its validated options."""

    name: str
    options: Any
    entry: Any = None

    @property
    def obj(self):
        return self.entry.obj


@dataclass
class Stage:
    epochs: int
    method: Named
    augment: AugmentSpec
    optimizer: Named
    schedule: Named
    index: int = 0


@dataclass
class ParsedTrial:
    cfg: TrialConfig
    model: Named
    stages: list[Stage]
    metrics: list[Named] = field(default_factory=list)
    init_from: InitFrom | None = None

    @property
    def optimizer(self) -> Named:
        return self.stages[0].optimizer

    @property
    def method(self) -> Named:
        return self.stages[0].method


def _named(reg: Registry, d: dict, path: str, key: str, file: str | None) -> Named:
    d = dict(d)
    name = d.pop(key, None)
    if not isinstance(name, str):
        raise StudyError(f"needs a '{key}' naming a {reg.kind}", file=file, path=path,
                         expected="one of: " + ", ".join(reg.names()))
    try:
        entry = reg.get(name, path=f"{path}.{key}")
    except StudyError as e:
        raise e.located(file=file) from None
    try:
        opts = entry.schema.model_validate(d)
    except ValidationError as e:
        raise_all(pydantic_errors(e, entry.schema, file=file, prefix=path))
    return Named(name, opts, entry)


def parse_init_from(d: dict | InitFrom) -> InitFrom:
    """`train.init_from` as an InitFrom; a mistake names the key and shows a valid example."""
    if isinstance(d, InitFrom):
        return d
    if not isinstance(d, dict):
        raise StudyError("must be a mapping", path=INIT_FROM,
                         expected="{study: NAME, match: {path: value}} or {results: DIR, trial_id: ID}")
    try:
        return InitFrom.model_validate(d)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = f"unknown key '{err['loc'][-1]}'"
        raise StudyError(msg, path=f"{INIT_FROM}.{loc}" if loc else INIT_FROM,
                         expected="keys: " + ", ".join(InitFrom.model_fields),
                         hint="e.g. init_from: {study: aug180, match: {seed: 0}}") from None


def metric_items(evaluate: list[Any], file: str | None = None) -> list[tuple[str, dict, str]]:
    """`- accuracy` / `- robustness: {...}` -> (name, options, path)."""
    items = []
    for i, item in enumerate(evaluate):
        path = f"evaluate.{i}"
        if isinstance(item, str):
            items.append((item, {}, path))
        elif isinstance(item, dict) and len(item) == 1:
            name, opts = next(iter(item.items()))
            if opts is None:
                opts = {}
            if not isinstance(opts, dict):
                raise StudyError(f"options of metric '{name}' must be a mapping", file=file,
                                 path=f"{path}.{name}", expected="e.g. {attack: pgd, eps: [0, 0.1]}")
            items.append((str(name), opts, f"{path}.{name}"))
        else:
            raise StudyError("each evaluate item is a metric name or {name: {options}}", file=file,
                             path=path, expected="e.g. '- accuracy' or '- robustness: {attack: pgd}'")
    return items


def _check_curriculum(stage: Stage, where: str) -> None:
    """A CuSP curriculum of n (θ, ε) pairs needs n − 1 steps inside its stage. Without explicit
    milestones it steps when the lr does, which only a stepped schedule gives: a cosine
    schedule changes the lr every epoch (the curriculum would advance every epoch), a constant
    one (or gamma 1) never. Too few steps would leave the last pairs unused."""
    m = stage.method
    n = len(m.options.rotations) if m.name == "cusp" else 0
    if n < 2:
        return
    even = [max(1, round(stage.epochs * k / n)) for k in range(1, n)]
    if m.options.milestones is not None:
        inside = [e for e in m.options.milestones if e < stage.epochs]
        if len(inside) < n - 1:
            raise StudyError(
                f"cusp has {n} curriculum steps but only {len(inside)} of its milestones fall inside the "
                f"stage's {stage.epochs} epochs, so the last (θ, ε) pairs are never used",
                path=f"{where}.method.milestones", expected=f"{n - 1} milestones below {stage.epochs}",
                hint=f"e.g. milestones: {even}")
        return
    sched = stage.schedule
    steps = list(getattr(sched.options, "milestones", []) or []) if sched.name == "multistep" else []
    inside = [e for e in steps if 0 < e < stage.epochs]
    if sched.name == "multistep" and len(inside) >= n - 1 and sched.options.gamma != 1:
        return
    if sched.name == "cosine":
        why = "the 'cosine' schedule changes the lr every epoch"
    elif sched.name == "multistep" and inside and sched.options.gamma != 1:
        why = f"the schedule steps the lr only {len(inside)} time(s) within the stage's {stage.epochs} epochs"
    else:
        why = f"the '{sched.name}' schedule never changes the lr within the stage's {stage.epochs} epochs"
    raise StudyError(
        f"cusp has {n} curriculum steps and no milestones, so it advances whenever the lr steps, but {why}",
        path=f"{where}.method.milestones",
        expected=f"{n - 1} curriculum milestones (epochs within the stage) or a multistep lr schedule "
                 f"with {n - 1} steps inside the stage",
        hint=f"add `milestones: {even}` to the cusp method, or use "
             f"`schedule: {{name: multistep, milestones: {even}}}`")


def _stages(t: TrainSpec, attempt, file: str | None) -> list[Stage]:
    stages: list[Stage] = []
    if t.stages:
        for i, st in enumerate(t.stages):
            p = f"train.stages.{i}"
            m = attempt(_named, METHODS, st.method or t.method, f"{p}.method" if st.method else "train.method", "name", file)
            o = attempt(_named, OPTIMIZERS, st.optimizer or t.optimizer,
                        f"{p}.optimizer" if st.optimizer else "train.optimizer", "name", file)
            s = attempt(_named, SCHEDULES, st.schedule or t.schedule,
                        f"{p}.schedule" if st.schedule else "train.schedule", "name", file)
            stages.append(Stage(st.epochs, m, st.augment or t.augment, o, s, i))
    else:
        m = attempt(_named, METHODS, t.method, "train.method", "name", file)
        o = attempt(_named, OPTIMIZERS, t.optimizer, "train.optimizer", "name", file)
        s = attempt(_named, SCHEDULES, t.schedule, "train.schedule", "name", file)
        stages.append(Stage(t.epochs, m, t.augment, o, s, 0))
    for st in stages:
        if None not in (st.method, st.schedule):
            attempt(_check_curriculum, st, f"train.stages.{st.index}" if t.stages else "train")
    return stages


def _attempter(errors: list[StudyError]):
    """attempt(fn, *args): fn's result, or None with its StudyError(s) added to `errors`, so
    one validation reports every mistake of a trial at once."""
    def attempt(fn, *a):
        try:
            return fn(*a)
        except StudyErrors as e:
            errors.extend(e.errors)
        except StudyError as e:
            errors.append(e)
        return None
    return attempt


def validate_trial(config: dict, file: str | None = None) -> ParsedTrial:
    try:
        cfg = TrialConfig.model_validate(config)
    except ValidationError as e:
        raise_all(pydantic_errors(e, TrialConfig, file=file))
    errors: list[StudyError] = []

    attempt = _attempter(errors)

    if cfg.data.dataset not in DATASETS:
        attempt(DATASETS.get, cfg.data.dataset, "data.dataset")
    model = attempt(_named, MODELS, cfg.model, "model", "arch", file)
    stages = _stages(cfg.train, attempt, file)
    init_from = attempt(parse_init_from, cfg.train.init_from) if cfg.train.init_from is not None else None
    metrics: list[Named] = []
    items = attempt(metric_items, cfg.evaluate, file) or []
    paths: list[str] = []
    for name, opts, path in items:
        n = attempt(_named, METRICS, {"name": name, **opts}, path, "name", file)
        if n is not None:
            metrics.append(n)
            paths.append(path)
    if not errors:
        errors.extend(check_during_training(cfg, list(zip(metrics, paths))))
    # Entry errors are located relative to the trial; add the file.
    raise_all([e if e.file else e.located(file=file) for e in errors])
    return ParsedTrial(cfg=cfg, model=model, stages=stages, metrics=metrics, init_from=init_from)


# ------------------------------------------------------------- many trials of one study

def _collect(fn, *args):
    """Run fn, raising every StudyError its `attempt` collected (as validate_trial does)."""
    errors: list[StudyError] = []

    attempt = _attempter(errors)

    out = fn(attempt, *args)
    raise_all(errors)
    return out


def _data_section(d: dict) -> DataSpec:
    data = DataSpec.model_validate(d)
    DATASETS.get(data.dataset, "data.dataset")
    return data


def _train_section(attempt, d: dict, file: str | None) -> tuple:
    t = TrainSpec.model_validate(d)
    init_from = attempt(parse_init_from, t.init_from) if t.init_from is not None else None
    return t, _stages(t, attempt, file), init_from


def _metrics_section(evaluate: list, file: str | None) -> list[tuple[Named, str]]:
    """The parsed metrics with their key paths (`evaluate.1.robustness`)."""
    return [(_named(METRICS, {"name": name, **opts}, path, "name", file), path)
            for name, opts, path in metric_items(evaluate, file)]


# Trial.sections holds one text per config section, in this (sorted) order.
_SECTIONS = tuple(sorted(TrialConfig.model_fields))
_SECTION_SET = frozenset(_SECTIONS)
_AT = {name: i for i, name in enumerate(_SECTIONS)}
_HEAD = tuple(k for k in _SECTIONS if k not in ("data", "train"))


class TrialValidator:
    """validate_trial for the many trials of one study, each distinct section validated once.

    A 100,000-trial grid has a few distinct `data`, `model` and `evaluate` sections and one
    `train` section per hyperparameter point: each is checked against the schema and its
    registries the first time its canonical text (Trial.sections, from expand) shows up, and
    the result is shared by every trial with the same text (read-only, like the configs). A
    trial with any failing section goes through validate_trial, so what a mistake reports
    does not depend on this cache.
    """

    def __init__(self, file: str | None = None):
        self.file = file
        self._memo: dict[tuple[str, str], Any] = {}

    def __call__(self, config: dict, sections: tuple[str, ...] = ()) -> ParsedTrial:
        if len(sections) != len(_SECTIONS) or config.keys() != _SECTION_SET:
            return validate_trial(config, self.file)
        try:
            return self._reuse(config, sections)
        except (StudyError, ValidationError):
            return validate_trial(config, self.file)

    @property
    def validated(self) -> dict[str, int]:
        """How many distinct sections of each kind were validated so far."""
        out: dict[str, int] = {}
        for name, _ in self._memo:
            out[name] = out.get(name, 0) + 1
        return out

    def _once(self, name: str, text: str, make):
        key = (name, text)
        hit = self._memo.get(key)
        if hit is None:
            hit = self._memo[key] = make()
        return hit

    def _reuse(self, config: dict, text: tuple[str, ...]) -> ParsedTrial:
        file = self.file
        data = self._once("data", text[_AT["data"]], lambda: _data_section(config["data"]))
        train, stages, init_from = self._once("train", text[_AT["train"]],
                                              lambda: _collect(_train_section, config["train"], file))
        # Seed, device, model and evaluate are checked once per distinct combination of them;
        # every trial with that combination gets a copy with its own (validated) data and train.
        head, model, metrics, during = self._once("head", tuple(text[_AT[k]] for k in _HEAD),
                                                  lambda: self._head(config, text, data, train))
        cfg = head.model_copy(update={"data": data, "train": train})
        # every_epochs / train.select read data, train and evaluate together: checked per trial
        # (cheap), and a trial that fails goes through validate_trial for its located errors.
        if (train.select is not None or during) and check_during_training(cfg, metrics):
            return validate_trial(config, file)
        return ParsedTrial(cfg=cfg, model=model, stages=stages, metrics=[m for m, _ in metrics],
                           init_from=init_from)

    def _head(self, config: dict, text: tuple[str, ...], data, train) -> tuple:
        """(TrialConfig, model, metrics with their key paths, whether a metric runs during training)."""
        file = self.file
        cfg = TrialConfig.model_validate({**config, "data": data, "train": train})
        model = self._once("model", text[_AT["model"]], lambda: _named(MODELS, cfg.model, "model", "arch", file))
        metrics = self._once("evaluate", text[_AT["evaluate"]], lambda: _metrics_section(cfg.evaluate, file))
        return cfg, model, metrics, any(m.options.every_epochs for m, _ in metrics)
