"""Every trial starts from the process state a fresh worker would give it.

Ray Tune reuses a worker process for the next trial (`tune.reuse_workers`, on by default:
a fresh process per trial costs about 2 s of start-up, importing torch, on a trivial
trial). Tune's reset of a function trainable only starts the function again in a new
thread; whatever the previous trial changed in the process stays. `fresh_trial(seed)`
wraps one trial: on entry it puts back the process-wide state recorded when this process
started its first trial, and reseeds every global RNG from the trial's seed; on exit it
undoes the trial's changes to the environment. tests/test_isolation.py runs the same
trials in reused and in fresh workers and gets bit-identical losses and metrics.
Plain PyTorch: no Ray here.
"""

from __future__ import annotations

import gc
import os
import random
import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import numpy as np
import torch

# Process-wide torch settings a trial may change, as (name, read, write). Grad mode,
# inference mode and autocast are thread-local: each trial runs in a new thread, so they
# start at their defaults without help. TF32/bf16 matmul precision is read and written
# through torch's per-backend `fp32_precision` settings only: reading the legacy getters
# after the new ones were set raises in torch 2.9+.
_B = torch.backends
_PRECISION = [("fp32_precision", _B), ("cuda.matmul.fp32_precision", _B.cuda.matmul),
              ("cudnn.fp32_precision", _B.cudnn), ("cudnn.conv.fp32_precision", _B.cudnn.conv),
              ("cudnn.rnn.fp32_precision", _B.cudnn.rnn), ("mkldnn.fp32_precision", _B.mkldnn),
              ("mkldnn.matmul.fp32_precision", _B.mkldnn.matmul), ("mkldnn.conv.fp32_precision", _B.mkldnn.conv),
              ("mkldnn.rnn.fp32_precision", _B.mkldnn.rnn)]


def _attr(obj: Any, name: str) -> tuple[Callable[[], Any], Callable[[Any], None]]:
    return (lambda: getattr(obj, name)), (lambda v: setattr(obj, name, v))


SETTINGS: list[tuple[str, Callable[[], Any], Callable[[Any], None]]] = [
    # Deterministic kernels (and their warn-only mode): a trial that asks for them would
    # make every later trial in the process slower or raise on nondeterministic ops.
    ("deterministic", lambda: (torch.are_deterministic_algorithms_enabled(),
                               torch.is_deterministic_algorithms_warn_only_enabled()),
     lambda v: torch.use_deterministic_algorithms(v[0], warn_only=v[1])),
    ("fill_uninitialized_memory", *_attr(torch.utils.deterministic, "fill_uninitialized_memory")),
    # cuDNN: benchmark mode picks kernels by timing (a different algorithm, different bits).
    ("cudnn.enabled", *_attr(_B.cudnn, "enabled")),
    ("cudnn.benchmark", *_attr(_B.cudnn, "benchmark")),
    ("cudnn.deterministic", *_attr(_B.cudnn, "deterministic")),
    # oneDNN on the CPU: convolutions take another code path without it.
    ("mkldnn.enabled", *_attr(_B.mkldnn, "enabled")),
    *[(name, *_attr(obj, "fp32_precision")) for name, obj in _PRECISION],
    ("matmul.fp16_reduced", *_attr(_B.cuda.matmul, "allow_fp16_reduced_precision_reduction")),
    ("matmul.bf16_reduced", *_attr(_B.cuda.matmul, "allow_bf16_reduced_precision_reduction")),
    # Tensors created without a dtype/device (model parameters, masks, grids).
    ("default_dtype", torch.get_default_dtype, torch.set_default_dtype),
    ("default_device", torch.get_default_device,
     lambda v: torch.set_default_device(None if v == torch.device("cpu") else v)),
    # Anomaly detection: global in torch, and slows every backward.
    ("anomaly", lambda: (torch.is_anomaly_enabled(), torch.is_anomaly_check_nan_enabled()),
     lambda v: torch.autograd.set_detect_anomaly(v[0], check_nan=v[1])),
    # Intra-op threads: the trainable sets them from the trial's CPUs right after this.
    ("num_threads", torch.get_num_threads, torch.set_num_threads),
]

_baseline: dict[str, Any] | None = None


def snapshot() -> dict[str, Any]:
    return {name: read() for name, read, _ in SETTINGS}


def reset_process_state(seed: int) -> list[str]:
    """Put this process back to the state its first trial started from; returns the names
    of the settings that had to be restored (a trial changed them). One comment per item."""
    global _baseline
    if _baseline is None:
        # The first trial in this process: what it sees is what a fresh worker sees.
        _baseline = snapshot()
    restored = []
    # torch's process-wide flags and defaults (SETTINGS above).
    for name, read, write in SETTINGS:
        if read() != _baseline[name]:
            write(_baseline[name])
            restored.append(name)
    # Compiled graphs: torch.compile's in-memory caches (dynamo's code cache, guards,
    # recompilation counters) would let a trial reuse, or be limited by, an earlier
    # trial's compilations. Only touched when something imported the compiler.
    if "torch._dynamo" in sys.modules:
        sys.modules["torch._dynamo"].reset()
    # The previous trial's model, optimizer and data become garbage now; on a GPU its
    # cached blocks go back too, so a trial fits (or runs out of memory) as in a fresh worker.
    # What survives is the process's own (torch, imported modules, caches): frozen out of the
    # cyclic collector, so the next reset scans only what the trial in between allocated. A
    # full collection over torch's objects cost about 0.3 s per trial (py-spy, 2-core CPU);
    # frozen objects that die are still freed by reference counting, only cycles among them stay.
    gc.collect()
    gc.freeze()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    # Global RNGs: torch (CPU and every CUDA device), NumPy and Python's `random`, seeded
    # from the trial's seed (a fresh worker would seed NumPy and `random` from the OS).
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    # Not reset here, because nothing carries over: the data bundle (Tune's
    # with_parameters fetches it from the object store again for every trial), the
    # trial's reporter and model (made per call), raystudy's module caches (pure
    # functions of their arguments: escnn bases, expression parses, noise factors).
    return restored


@contextmanager
def fresh_trial(seed: int) -> Iterator[list[str]]:
    """One trial's run: reset on entry (yields what was restored); on exit the environment
    variables are as the trial found them (set_threads' OMP_NUM_THREADS, a method's own)."""
    restored = reset_process_state(seed)
    env = dict(os.environ)
    try:
        yield restored
    finally:
        for k in [k for k in os.environ if k not in env]:
            del os.environ[k]
        for k, v in env.items():
            if os.environ.get(k) != v:
                os.environ[k] = v
