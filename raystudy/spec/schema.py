"""The pydantic schema of a study file and of one resolved trial.

Sections whose options depend on a registry entry (model, optimizer, schedule,
method, metrics) are kept as plain dicts here and validated against the entry's
own options class in `validate_trial`, so every error carries its dotted path.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer, model_validator

from .healthspec import HealthOptions
from .tunespec import SchedulerSpec, SearchSpec, TrackingSpec
from .claimspec import ClaimSpec
from .types import Angle

# Marks a field added after studies had already run (see new_field).
_OMIT_DEFAULT = "raystudy_omit_default"


def new_field(default: Any = ..., **kwargs: Any) -> Any:
    """`Field(...)` for an option added to a section that is part of the trial config.

    A trial's id hashes its dumped config, so a plain new field would enter every dump with its
    default and change the id of every trial ever run. A `new_field` is left out of the dump
    while it holds its default: existing studies keep their ids, and a study that sets the
    option gets new ones (it computes something else)."""
    extra = dict(kwargs.pop("json_schema_extra", None) or {})
    extra[_OMIT_DEFAULT] = True
    return Field(default, json_schema_extra=extra, **kwargs)


class Strict(BaseModel):
    # ser_json_inf_nan: a .nan or .inf in the file stays what it is when the study is dumped
    # into trial configs, so the check of that value says so (instead of "got None").
    # allow_inf_nan=False: such a value is a mistake, not a setting.
    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants", allow_inf_nan=False)

    @model_serializer(mode="wrap")
    def _omit_new_defaults(self, handler):
        out = handler(self)
        for name, f in type(self).model_fields.items():
            extra = f.json_schema_extra
            if (isinstance(out, dict) and name in out and isinstance(extra, dict) and extra.get(_OMIT_DEFAULT)
                    and getattr(self, name) == f.get_default(call_default_factory=True)):
                del out[name]
        return out


class DataSpec(Strict):
    dataset: str = "mnist"
    # Where torchvision-format files live; default: $RAYSTUDY_DATA or ./data.
    root: str | None = None
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    # Subsample sizes (None = all). Smoke runs shrink these.
    train_size: int | None = Field(None, ge=1)
    test_size: int | None = Field(None, ge=1)
    split_seed: int = 0
    # mnist only: 'auto' uses torchvision files when present, else the embedded digits.
    source: Literal["auto", "torchvision", "embedded"] = "auto"


class AugmentSpec(Strict):
    """Training-time augmentation, applied batched on the device.

    rotation: uniform angle in [-θ, θ] degrees; translation: integer shift in
    [-i, i] pixels on each axis; both nearest-neighbour with black fill (as in the
    papers). crop: pad-and-crop by up to `crop` pixels; flip: random horizontal flip.
    worst_of_k: of k such random transforms per example, train on the one with the highest
    loss (Engstrom et al., 2019; 1 = plain random augmentation).
    """

    rotation: Angle = 0.0
    translation: int = Field(0, ge=0)
    crop: int = Field(0, ge=0)
    flip: bool = False
    worst_of_k: int = new_field(1, ge=1)


class StageSpec(Strict):
    """One stage of a staged ('a -> b') training run."""

    epochs: int = Field(ge=0)
    method: dict[str, Any] | None = None
    augment: AugmentSpec | None = None
    optimizer: dict[str, Any] | None = None
    schedule: dict[str, Any] | None = None


class SelectSpec(Strict):
    """`train.select`: keep the weights of the epoch where a validation scalar was best and
    evaluate those (early stopping on robust validation accuracy, Rice et al. 2020,
    "Overfitting in adversarially robust deep learning"). `by` is `val_accuracy`, `val_loss`
    (logged every epoch) or a `val.`-prefixed scalar of an `every_epochs` metric."""

    by: str = Field(min_length=1)
    mode: Literal["max", "min"] = "max"

    @model_validator(mode="after")
    def _loss_is_minimized(self):
        # The default `max` would silently keep the worst epoch of a loss.
        if self.by.endswith("loss") and "mode" not in self.model_fields_set:
            raise ValueError(f"'{self.by}' is a loss: say which epoch is best with mode: min (or max)")
        return self


class TrainSpec(Strict):
    epochs: int = Field(10, ge=0)
    batch_size: int = Field(128, ge=1)
    optimizer: dict[str, Any] = Field(default_factory=lambda: {"name": "sgd", "lr": 0.05})
    schedule: dict[str, Any] = Field(default_factory=lambda: {"name": "constant"})
    method: dict[str, Any] = Field(default_factory=lambda: {"name": "natural"})
    augment: AugmentSpec = Field(default_factory=AugmentSpec)
    stages: list[StageSpec] | None = None
    # Warm start from another trial's final checkpoint (a results folder + trial id or
    # a config match); resolved by the runner. A plain dict here (checked as InitFrom by
    # validate_trial) so a trial's config, and so its id, is what the study file says.
    init_from: dict[str, Any] | None = None
    eval_batch_size: int = Field(500, ge=1)
    checkpoint_every: int = Field(1, ge=0)
    # Stop a trial whose loss becomes NaN/inf instead of wasting its GPU time.
    fail_on_nonfinite: bool = True
    # Performance knobs (see benchmarks/): bf16 autocast, channels_last, torch.compile.
    amp: bool = False
    channels_last: bool = False
    compile: bool = False
    # Best-epoch selection (SelectSpec); the final weights (model.pt) are the selected ones.
    select: SelectSpec | None = new_field(None)
    # The same for the metrics that declare they allow it (attacks and forward passes; see
    # metrics.base.Metric.fast_path): the model's forward and backward in bf16 / compiled.
    eval_amp: bool = new_field(False)
    eval_compile: bool = new_field(False)

    @field_validator("optimizer", "schedule", "method")
    @classmethod
    def _named(cls, v):
        if "name" not in v:
            raise ValueError("needs a 'name' key")
        return v


class InitFrom(Strict):
    """`train.init_from`: where a warm start's weights come from: one of `results` (a study's
    results folder) or `study` (a study name under `root`), and one of `trial_id` or `match`
    (dotted config paths)."""

    results: str | None = None
    study: str | None = None
    # Results root for `study`; default: the root of the run (`raystudy run --results`).
    root: str | None = None
    trial_id: str | None = None
    match: dict[str, Any] = Field(default_factory=dict)
    # False: load the tensors whose names and shapes match, keep the rest as initialized.
    strict: bool = True

    @model_validator(mode="after")
    def _one_of_each(self):
        if (self.results is None) == (self.study is None):
            raise ValueError("give exactly one of 'results' (a results folder) or 'study' (a study name)")
        if self.root is not None and self.study is None:
            raise ValueError("'root' goes with 'study'; with 'results' give the full folder")
        if (self.trial_id is None) == (not self.match):
            raise ValueError("give exactly one of 'trial_id' or 'match' ({dotted.path: value, ...})")
        return self


class ResourcesSpec(Strict):
    cpu: float = Field(1.0, gt=0)
    gpu: float = Field(0.0, ge=0)

    @field_validator("gpu")
    @classmethod
    def _gpu(cls, v):
        if v > 1 and v != int(v):
            raise ValueError(f"a GPU fraction above 1 ({v}) is not allowed: use a fraction <= 1 or a whole number")
        return v


class TuneSpec(Strict):
    num_samples: int = Field(1, ge=1)
    max_concurrent: int | None = Field(None, ge=1)
    retries: int = Field(0, ge=0)
    # Seed for sampling random space entries, so a re-run proposes the same trials.
    seed: int = 0
    # A search algorithm and an early-stopping scheduler (spec/tunespec.py); not trial config.
    search: SearchSpec | None = None
    scheduler: SchedulerSpec | None = None
    # Run the next trial in the same worker process (raystudy.isolation resets what a trial
    # could leave behind); false starts a fresh process per trial (about 2 s more each).
    reuse_workers: bool = True


def _device(v: str) -> str:
    import re
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", v):
        raise ValueError(f"unknown device '{v}': use auto, cpu, cuda, cuda:N or mps")
    return v


class TrialConfig(Strict):
    """Everything one trial needs; the unit that is hashed, validated and shipped to Ray."""

    seed: int = 0
    device: str = "auto"
    data: DataSpec = Field(default_factory=DataSpec)
    model: dict[str, Any]
    train: TrainSpec = Field(default_factory=TrainSpec)
    evaluate: list[Any] = Field(default_factory=lambda: ["accuracy"])

    _check_device = field_validator("device")(classmethod(lambda cls, v: _device(v)))

    @field_validator("model")
    @classmethod
    def _arch(cls, v):
        if "arch" not in v:
            raise ValueError("needs an 'arch' key")
        return v


TRIAL_KEYS = set(TrialConfig.model_fields)


class StudySpec(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
    description: str = ""
    seed: int = 0
    device: str = "auto"
    data: DataSpec = Field(default_factory=DataSpec)
    model: dict[str, Any]
    train: TrainSpec = Field(default_factory=TrainSpec)
    evaluate: list[Any] = Field(default_factory=lambda: ["accuracy"])
    space: dict[str, Any] = Field(default_factory=dict)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    tune: TuneSpec = Field(default_factory=TuneSpec)
    report: list[dict[str, Any]] = Field(default_factory=list)
    # Overrides (dotted paths into this document) applied by `--smoke` / `--profile NAME`.
    smoke: dict[str, Any] = Field(default_factory=dict)
    profiles: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # Study-level steps that run after all trials (e.g. transfer attacks).
    after: list[Any] = Field(default_factory=list)
    # Which health checks run and their tolerances (raystudy.health); not part of a trial's id.
    health: HealthOptions = Field(default_factory=HealthOptions)
    # Copies of every trial's numbers in TensorBoard / MLflow / W&B (spec/tunespec.py).
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    # What the papers claim, as comparisons and trends with a verdict after every run
    # (spec/claimspec.py, analysis/claims.py); study-level: never part of a trial's id.
    claims: list[ClaimSpec] = Field(default_factory=list)

    _check_device = field_validator("device")(classmethod(lambda cls, v: _device(v)))

    @model_validator(mode="after")
    def _space_keys(self):
        return self
