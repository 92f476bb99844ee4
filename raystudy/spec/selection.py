"""Metrics taken during training on the validation split, and the best-epoch selection that
reads them (`train.select`), checked before Ray starts.

A metric with `every_epochs: k` also runs after every k-th epoch (and after the last) on the
validation split; its scalars enter the epoch log as `val.<scalar>`, apart from the final
test-split numbers, so choosing an epoch never looks at the test set (Rice et al. 2020,
"Overfitting in adversarially robust deep learning", select by robust validation accuracy).
"""

from __future__ import annotations

from typing import Any

from ..errors import StudyError, suggest

VAL_PREFIX = "val."
# Logged by the training loop after every epoch (train.py), on the whole validation split.
EVERY_EPOCH = ("val_accuracy", "val_loss")
SELECT_BY = "train.select.by"


def val_options(options: Any) -> Any:
    """The options of a metric's run during training: the same, on the validation split."""
    return options.model_copy(update={"split": "val"})


def val_scalars(named) -> list[str] | None:
    """The `val.` names of the scalars an `every_epochs` metric logs during training; None when
    the metric does not declare its outputs (the metric template's `outputs(options)`)."""
    outputs = getattr(named.obj, "outputs", None)
    if outputs is None:
        return None
    try:
        scalars = outputs(val_options(named.options))[0]
    except NotImplementedError:
        return None
    return [VAL_PREFIX + s for s in scalars]


def _val_split_needed(cfg, timed: list[str]) -> list[StudyError]:
    if cfg.data.val_fraction > 0:
        return []
    users = [f"{p}.every_epochs" for p in timed] + ([SELECT_BY] if cfg.train.select is not None
                                                    and cfg.train.select.by in EVERY_EPOCH else [])
    if not users:
        return []
    return [StudyError(f"{', '.join(users)} measure(s) on the validation split during training, "
                       "but data.val_fraction is 0 (no validation images)", path="data.val_fraction",
                       expected="a fraction > 0 of the training set held out",
                       hint="e.g. data: {val_fraction: 0.1}, or drop every_epochs / train.select")]


def _offers(named, by: str) -> bool:
    """Whether the metric logs `by` during training (by its declared outputs, or, for a metric
    that declares none, by its name's prefix)."""
    names = val_scalars(named)
    if names is not None:
        return by in names
    stem = VAL_PREFIX + named.name
    return by == stem or by.startswith(stem + ".")


def _select_errors(cfg, metrics: list[tuple[Any, str]]) -> list[StudyError]:
    by = cfg.train.select.by
    timed = [m for m, _ in metrics if m.options.every_epochs]
    if by in EVERY_EPOCH or any(_offers(m, by) for m in timed):
        return []
    if by in ("accuracy", "accuracy.val", "val.accuracy"):
        return [StudyError(f"'{by}' is not a validation number logged during training", path=SELECT_BY,
                           expected="val_accuracy (the whole validation split, every epoch)",
                           hint="did you mean 'val_accuracy'?")]
    for m, path in metrics:
        if not m.options.every_epochs and (_offers(m, by) or _offers(m, VAL_PREFIX + by)):
            return [StudyError(f"'{by}' is not logged during training: {path} runs only after training",
                               path=SELECT_BY, expected="a scalar of a metric with every_epochs",
                               hint=f"add every_epochs: 1 to {path} and select by its validation "
                                    f"number '{by if by.startswith(VAL_PREFIX) else VAL_PREFIX + by}' "
                                    "(never a test-split number)")]
    choices = list(EVERY_EPOCH) + [n for m in timed for n in (val_scalars(m) or [f"{VAL_PREFIX}{m.name}.*"])]
    best = suggest(by, choices)
    if best is None and not by.startswith(VAL_PREFIX):
        best = suggest(VAL_PREFIX + by, choices)
    return [StudyError(f"unknown selection scalar '{by}'", path=SELECT_BY,
                       expected="one of: " + ", ".join(choices),
                       hint=f"did you mean '{best}'?" if best else
                       "add every_epochs: k to the metric whose validation number should select the epoch")]


def check_during_training(cfg, metrics: list[tuple[Any, str]]) -> list[StudyError]:
    """Errors of `every_epochs` and `train.select` in a trial: `metrics` are the parsed
    metrics (Named) with their key paths (`evaluate.1.robustness`)."""
    timed = [path for m, path in metrics if m.options.every_epochs]
    errors = _val_split_needed(cfg, timed)
    if cfg.train.select is not None:
        errors += _select_errors(cfg, metrics)
    return errors
