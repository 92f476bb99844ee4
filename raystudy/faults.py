"""Test-only fault injection: RAYSTUDY_FAULT, read by the driver (runner) and the workers
(trainable) alike. The tests of tests/test_reliability.py kill workers, raise, diverge and
interrupt the driver with it; real studies never set it."""

from __future__ import annotations

import os

from .errors import StudyError

FAULT_ENV = "RAYSTUDY_FAULT"
DRIVER_FAULTS = ("driver-sigint", "driver-sigkill")
FAULT_KINDS = ("kill", "raise", "oom", "nan", "leak", *DRIVER_FAULTS)


def parse_faults(text: str | None) -> list[dict]:
    """RAYSTUDY_FAULT: comma-separated `KIND@EPOCH[:KEY=VALUE]`.

    kill@2         the worker SIGKILLs itself after training epoch 2, before reporting it
    raise@1        a RuntimeError after epoch 1
    oom@1          a torch.OutOfMemoryError after epoch 1
    nan@1          a NonFiniteLoss after epoch 1 (a diverged trial)
    leak@0         after its final report the trial leaves process-wide state behind
                   (see leak_process_state): the next trial in a reused worker must not see it
    driver-sigint@2, driver-sigkill@2
                   the driver signals itself when a trial reports epoch 2, once another
                   trial has completed in this run (Ctrl-C / a crash)
    ...:seed=1     only in trials whose varied params have seed == 1

    Every fault fires only on a trial's first attempt (no checkpoint restored), so a
    retry or a later `raystudy run` shows whether the trial recovers.
    """
    out = []
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        head, _, cond = part.partition(":")
        kind, _, epoch = head.partition("@")
        if kind not in FAULT_KINDS or not epoch.isdigit():
            raise ValueError(f"{FAULT_ENV}: cannot read {part!r} (expected KIND@EPOCH[:KEY=VALUE], "
                             f"KIND one of {', '.join(FAULT_KINDS)})")
        f = {"kind": kind, "epoch": int(epoch)}
        if cond:
            k, _, v = cond.partition("=")
            f["where"] = (k, v)
        out.append(f)
    return out


def faults_from_env() -> tuple[list[dict], list[dict]]:
    """(worker faults, driver faults) from the environment; a typo is a StudyError."""
    text = os.environ.get(FAULT_ENV)
    if not text:
        return [], []
    try:
        faults = parse_faults(text)
    except ValueError as e:
        raise StudyError(str(e), path=FAULT_ENV) from None
    return ([f for f in faults if f["kind"] not in DRIVER_FAULTS],
            [f for f in faults if f["kind"] in DRIVER_FAULTS])


def faults_for(trial: dict) -> list[dict]:
    """The worker faults shipped with a trial that apply to it (`:KEY=VALUE` matches its params)."""
    faults = []
    for f in trial.get("faults") or []:
        if "where" in f:
            k, v = f["where"]
            if str(trial.get("params", {}).get(k)) != v:
                continue
        faults.append(f)
    return faults


LEAK_ENV = "RAYSTUDY_LEAKED"


def leak_process_state() -> None:
    """What a careless method or metric could leave behind in its worker: float64 as torch's
    default dtype (the next model would be built in float64), deterministic kernels, oneDNN
    off, a different thread count, reseeded global RNGs and an environment variable."""
    import random

    import numpy as np
    import torch
    torch.set_default_dtype(torch.float64)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.mkldnn.enabled = False
    torch.set_num_threads(max(1, torch.get_num_threads() + 1))
    torch.manual_seed(12345)
    np.random.seed(12345)
    random.seed(12345)
    os.environ[LEAK_ENV] = "1"
