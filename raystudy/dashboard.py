"""What the Ray dashboard shows of a study, and how a user gets in.

* Jobs page: the driver's job has the command line as its entrypoint (`raystudy run
  studies/x.yaml ...`) and metadata `raystudy.study`, `raystudy.results`, `raystudy.code`
  (also in `ray list jobs --detail`).
* Actors page and log prefixes: each trial's actor is of class `raystudy_<study>` and has the
  repr `<study>:<trial id>` (the Class and Repr columns; the driver's console prefixes the
  actor's log lines with the repr). Ray takes an actor's repr once, when it starts: an actor
  that Tune reuses for later trials keeps the name of its first trial.
* Login: with token authentication (Ray 2.60's default) the page opens on a token box;
  raystudy prints where the token is (raystudy.clusterauth.login_hint).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from .clusterauth import login_hint
from .provenance import describe


def job_metadata(study: str, out: Path, code: dict | None) -> dict[str, str]:
    """Metadata of the driver's Ray job (strings only, as Ray requires)."""
    meta = {"raystudy.study": study, "raystudy.results": str(Path(out).resolve())}
    if code:
        meta["raystudy.code"] = describe(code)
    return meta


def study_trainable(fn: Callable | type, study: str) -> type:
    """Tune's trainable class for `fn` whose actors are named `<study>:<trial id>`."""
    from ray.tune.trainable import wrap_function
    base = fn if isinstance(fn, type) else wrap_function(fn)

    class StudyTrial(base):  # type: ignore[misc, valid-type]
        def __repr__(self) -> str:
            trial = (getattr(self, "config", None) or {}).get("trial") or {}
            return f"{study}:{trial.get('trial_id', '?')}"

    StudyTrial.__name__ = StudyTrial.__qualname__ = study_class(study)
    return StudyTrial


def study_class(study: str) -> str:
    """The class name of the study's trial actors (the Actors page's Class column)."""
    return "raystudy_" + "".join(c if c.isalnum() else "_" for c in study)


def dashboard_lines(url: str | None, study: str) -> list[str]:
    """What the driver prints about the dashboard."""
    if not url:
        return []
    lines = [f"Ray dashboard at {url}"]
    hint = login_hint()
    if hint:
        lines.append(f"  {hint}")
    lines.append(f"  Actors page: this study's trials are the actors of class {study_class(study)} with Repr "
                 f"{study}:<trial id>; Jobs page: the job whose entrypoint is this command")
    return lines
