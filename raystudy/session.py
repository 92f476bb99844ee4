"""The Ray session of a run: connect to a cluster or start a local Ray, check that a node
can hold a trial, and keep Tune's own console output out of the way of ours.

Ray is imported inside these functions only, so importing this module needs no Ray.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
from typing import Any

from .clusterauth import check_auth, check_token_present
from .errors import StudyError


def check_address(address: str | None) -> None:
    """Before the driver loads data: a wrong address or missing credentials fail at once."""
    if address:
        _probe_address(address)


def _connected() -> bool:
    # A Ray this process already joined (a notebook, a test) has shown its credentials work.
    ray = sys.modules.get("ray")
    return bool(ray is not None and getattr(ray, "is_initialized", lambda: False)())


def _probe_address(address: str) -> None:
    """Fail in seconds on an unreachable cluster (ray.init would retry for minutes, then exit),
    or on one that will refuse this driver's authentication (raystudy.clusterauth)."""
    if address == "auto" or address.startswith("local"):
        return
    if not _connected():
        check_token_present()
    target = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        raise StudyError(f"'{address}' is not a Ray address", path="--address",
                         expected="HOST:PORT, ray://HOST:PORT or auto")
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=5):
            pass
    except OSError as e:
        raise StudyError(f"cannot reach the Ray cluster at '{address}' ({e.strerror or e})", path="--address",
                         hint="start it with `ray start --head` or check the address") from None
    if not address.startswith("ray://") and not _connected():
        check_auth(address, host.strip("[]") or "127.0.0.1", int(port))


def init_ray(address: str | None = None, dashboard: bool = True, num_cpus: int | None = None,
             num_gpus: int | None = None, job: dict[str, str] | None = None) -> str | None:
    """Connect to a cluster (`address`) or start a local Ray; returns the dashboard URL.
    `job`: metadata of the driver's Ray job (the dashboard's Jobs page, `ray list jobs --detail`)."""
    if address:
        _probe_address(address)
    import ray
    if ray.is_initialized():
        ctx = ray.get_runtime_context()
        return getattr(ctx, "dashboard_url", None) or None
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    from ray.job_config import JobConfig
    job_kw: dict[str, Any] = {"job_config": JobConfig(metadata=dict(job))} if job else {}
    try:
        if address:
            info = ray.init(address=address, logging_level="ERROR", log_to_driver=True, **job_kw)
        else:
            # "local": the embedded Ray the README promises, even when a cluster started with
            # `ray start` runs on this machine (ray.init() without an address would join it).
            kwargs: dict[str, Any] = dict(address="local", include_dashboard=dashboard, logging_level="ERROR",
                                          **job_kw)
            if dashboard:
                # Local only unless the user binds it elsewhere themselves.
                kwargs["dashboard_host"] = "127.0.0.1"
            if num_cpus is not None:
                kwargs["num_cpus"] = num_cpus
            if num_gpus is not None:
                kwargs["num_gpus"] = num_gpus
            info = ray.init(**kwargs)
    except (ConnectionError, TimeoutError, ValueError, RuntimeError, SystemExit) as e:
        if address:
            first = (str(e).splitlines() or [type(e).__name__])[0]
            # The address answered (_probe_address), so "start a cluster" would be wrong advice.
            raise StudyError(f"cannot join the Ray cluster at '{address}': {first}", path="--address",
                             hint="the address answers but Ray could not join: check that this driver's Ray and "
                                  "Python versions are the cluster's (`ray --version`) and, with token "
                                  "authentication, RAY_AUTH_MODE=token and the cluster's token") from None
        raise
    url = getattr(info, "dashboard_url", None)
    return f"http://{url}" if url and not str(url).startswith("http") else url


def check_resources(res, file: str | None = None) -> None:
    """Refuse a study whose per-trial resources (spec.resources) no node has: Tune would wait forever."""
    import ray
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    best_cpu = max((n["Resources"].get("CPU", 0) for n in nodes), default=0)
    best_gpu = max((n["Resources"].get("GPU", 0) for n in nodes), default=0)
    if res.cpu > best_cpu or res.gpu > best_gpu:
        raise StudyError(f"no node can satisfy cpu={res.cpu:g}, gpu={res.gpu:g} "
                         f"(largest node: cpu={best_cpu:g}, gpu={best_gpu:g})", file=file,
                         path="resources", hint="lower resources.cpu / resources.gpu or add a node that has them")


class _DropTrialTraces(logging.Filter):
    """A failed trial is one line of ours (reason + path of its error.txt), not Tune's
    full traceback; every other warning and error still reaches the console."""

    PREFIXES = ("Trial task failed for trial", "Trials did not complete")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.PREFIXES)


@contextlib.contextmanager
def quiet_tune():
    """Tune's own console output (configuration box, result tables) off; our lines stay.

    With the legacy reporter and verbose=0 Tune prints nothing of its own.
    """
    old = os.environ.get("RAY_AIR_NEW_OUTPUT")
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    flt = _DropTrialTraces()
    loggers = [logging.getLogger(n) for n in ("ray.tune.execution.tune_controller", "ray.tune.tune")]
    for lg in loggers:
        lg.addFilter(flt)
    try:
        yield
    finally:
        for lg in loggers:
            lg.removeFilter(flt)
        if old is None:
            os.environ.pop("RAY_AIR_NEW_OUTPUT", None)
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = old
