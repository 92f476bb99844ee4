"""The schema of the study-level `tune.search`, `tune.scheduler` and `tracking` sections.

None of this is part of a trial's config, so none of it enters a trial id: a searched trial is
an ordinary trial whose config the searcher chose (its id hashes that config), and a scheduler
or a tracker only changes how trials run and where their numbers are copied to. Their checks
against the rest of the study are in spec/tuning.py; the Ray side is raystudy.search and
raystudy.tracking.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Mode = Literal["max", "min"]
SAMPLERS = ("tpe", "random", "nsga2", "cmaes")
SCHEDULERS = ("asha", "median")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class SearchSpec(_Section):
    """`tune.search`: a Tune search algorithm proposes the trials instead of the expansion."""

    name: Literal["optuna"] = "optuna"
    sampler: Literal["tpe", "random", "nsga2", "cmaes"] = "tpe"
    metric: str | list[str]
    mode: Mode | list[Mode]
    # The budget: trials proposed in all runs of the study together (a re-run continues).
    num_samples: int = Field(ge=1)
    # Default: tune.seed.
    seed: int | None = None
    # Keyword arguments of the Optuna sampler (e.g. {n_startup_trials: 5} for tpe).
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _objectives(self):
        if isinstance(self.metric, list) != isinstance(self.mode, list):
            raise ValueError("give metric and mode both as single values or both as lists")
        if isinstance(self.metric, list):
            if not self.metric:
                raise ValueError("metric needs at least one name")
            if len(self.metric) != len(self.mode):
                raise ValueError(f"{len(self.metric)} metrics but {len(self.mode)} modes: one mode per metric")
        return self

    @property
    def metrics(self) -> list[str]:
        return list(self.metric) if isinstance(self.metric, list) else [self.metric]


class SchedulerSpec(_Section):
    """`tune.scheduler`: stops unpromising trials early on a per-epoch metric."""

    name: Literal["asha", "median"]
    metric: str
    mode: Mode
    # Epochs every trial runs before it can be stopped.
    grace_period: int = Field(1, ge=1)
    # asha only
    reduction_factor: float | None = Field(None, gt=1)
    brackets: int | None = Field(None, ge=1)
    # median only
    min_samples_required: int | None = Field(None, ge=1)


def _on_off(v):
    # `mlflow: true` / `wandb: false` as shorthands for the default options / none.
    if v is True:
        return {}
    if v is False:
        return None
    return v


class MLflowSpec(_Section):
    # Default: $MLFLOW_TRACKING_URI, else a file store in the study's results folder (mlruns/).
    tracking_uri: str | None = None
    experiment_name: str | None = None       # default: the study's name
    tags: dict[str, str] = Field(default_factory=dict)
    # Log each trial's curves and per-epoch table as CSV artifacts.
    artifacts: bool = True


class WandbSpec(_Section):
    project: str | None = None               # default: the study's name
    # online needs `wandb login`; offline writes runs that `wandb sync` uploads later.
    mode: Literal["online", "offline", "disabled"] = "offline"
    entity: str | None = None
    group: str | None = None
    tags: list[str] = Field(default_factory=list)


class TrackingSpec(_Section):
    """`tracking`: copies of every trial's numbers in the trackers researchers already use."""

    tensorboard: bool = False
    mlflow: MLflowSpec | None = None
    wandb: WandbSpec | None = None

    _switch = field_validator("mlflow", "wandb", mode="before")(classmethod(lambda cls, v: _on_off(v)))

    @property
    def enabled(self) -> bool:
        return self.tensorboard or self.mlflow is not None or self.wandb is not None
