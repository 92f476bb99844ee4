"""One registry per extension kind (datasets, models, methods, metrics, attacks).

A new model / method / metric is one small file that registers a callable together
with a pydantic options class; the spec layer validates a study's options against
that class, so typos are caught before Ray starts anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict

from .errors import unknown_name_error


class Options(BaseModel):
    """Base of every registry entry's options: unknown keys are errors."""

    # allow_inf_nan=False: a .nan or .inf from the file is a mistake, not a setting.
    model_config = ConfigDict(extra="forbid", frozen=False, arbitrary_types_allowed=True, allow_inf_nan=False)


@dataclass
class Entry:
    name: str
    obj: Any
    schema: type[Options]
    doc: str = ""


class Registry:
    def __init__(self, kind: str, loader: Callable[[], None] | None = None):
        self.kind = kind
        self._entries: dict[str, Entry] = {}
        self._loader = loader
        self._loaded = False

    def register(self, name: str, schema: type[Options] = Options):
        def deco(obj):
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' registered twice")
            self._entries[name] = Entry(name, obj, schema, (obj.__doc__ or "").strip())
            return obj
        return deco

    def _ensure_loaded(self) -> None:
        # Entries live in their own modules; importing the package registers them.
        if not self._loaded and self._loader is not None:
            self._loaded = True
            self._loader()

    def get(self, name: str, path: str | None = None) -> Entry:
        self._ensure_loaded()
        if name not in self._entries:
            raise unknown_name_error(self.kind, name, self._entries, path=path)
        return self._entries[name]

    def names(self) -> list[str]:
        self._ensure_loaded()
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        self._ensure_loaded()
        return name in self._entries


def _load(*modules: str) -> Callable[[], None]:
    # By name, not by import statement: the modules that hold the entries import this one,
    # and the spec layer must be able to ask a registry without importing them up front.
    def load() -> None:
        import importlib
        for module in modules:
            importlib.import_module(module)
    return load


DATASETS = Registry("dataset", _load("raystudy.data"))
MODELS = Registry("model", _load("raystudy.models"))
METHODS = Registry("training method", _load("raystudy.methods"))
METRICS = Registry("metric", _load("raystudy.metrics"))
OPTIMIZERS = Registry("optimizer", _load("raystudy.optim"))
SCHEDULES = Registry("schedule", _load("raystudy.optim"))
ATTACKS = Registry("attack", _load("raystudy.attacks"))
# Study-level steps run once every trial finished (`after:`), e.g. the transfer matrix.
AFTER_STEPS = Registry("after step", _load("raystudy.poststeps"))
# Report charts (`report:`): the entry's object is the chart class, which is also its schema.
CHARTS = Registry("chart", _load("analysis.report"))
# Validators of whole study sections owned outside the spec layer (`report:`, `after:`): the
# spec asks this registry instead of importing the modules that know those sections.
SECTIONS = Registry("study section", _load("raystudy.poststeps", "analysis.report"))

ALL = (DATASETS, MODELS, METHODS, METRICS, OPTIMIZERS, SCHEDULES, ATTACKS, AFTER_STEPS, CHARTS, SECTIONS)
