"""Which code and which machine made a result (issue 19: provenance and code-aware resume).

A trial's id hashes its config only, so a re-run reuses every finished trial; after a bug
fix in a metric that would silently keep the old numbers. So every trial row also records:

  code.id       hash of the raystudy package's source files (*.py) and its version: the
                identity compared on a re-run. Only the package counts: an edit to the docs,
                the studies or the tests changes no result and no code.id.
  code.commit   the git commit of the checkout holding the package (None outside git)
  code.dirty    the package folder differs from that commit (uncommitted or untracked files)
  code.diff     hash of that difference (`git diff HEAD` of the package plus its untracked
                files); None when clean
  code.version  raystudy's version
  env.python, env.torch, env.torchvision, env.escnn, env.torchattacks, env.pyhessian,
  env.ray, env.numpy   versions where the trial ran (the worker)
  env.host, env.device, env.gpu, env.cuda, env.seed   the worker's host, the torch device,
                the GPU model and CUDA version when it used one, the seed it gave torch

The driver computes the code record once per run (two to four git calls) and ships it with each
trial; the worker adds env.* to its final result. study.json keeps one entry per run.
"""

from __future__ import annotations

import functools
import hashlib
import math
import platform
import socket
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

from . import __version__

PACKAGES = ("torch", "torchvision", "escnn", "torchattacks", "pyhessian", "ray", "numpy")
CODE_KEYS = ("code.id", "code.commit", "code.dirty", "code.diff", "code.version")
NOT_RECORDED = "code not recorded (results made before raystudy recorded provenance)"


def package_dir() -> Path:
    return Path(__file__).resolve().parent


def _sha(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "little"))
        h.update(p)
    return h.hexdigest()[:12]


def source_hash(pkg: Path) -> str:
    """Hash of every *.py file under `pkg` (relative path and content), in a fixed order."""
    files = sorted(p for p in pkg.rglob("*.py") if "__pycache__" not in p.parts)
    return _sha(*(part for p in files for part in (p.relative_to(pkg).as_posix().encode(), p.read_bytes())))


def _git(cwd: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.decode(errors="replace") if out.returncode == 0 else None


def _git_record(pkg: Path) -> dict[str, Any]:
    commit = _git(pkg, "rev-parse", "--verify", "-q", "HEAD")
    if not commit:
        return {"code.commit": None, "code.dirty": None, "code.diff": None}
    # "." is the package folder (cwd): only its state decides whether the code is dirty.
    status = _git(pkg, "status", "--porcelain", "--untracked-files=all", "--", ".") or ""
    dirty = bool(status.strip())
    diff = None
    if dirty:
        parts = [(_git(pkg, "diff", "HEAD", "--", ".") or "").encode()]
        top = Path((_git(pkg, "rev-parse", "--show-toplevel") or str(pkg)).strip())
        for line in sorted(status.splitlines()):
            if line.startswith("?? "):
                f = top / line[3:].strip().strip('"')
                parts += [line.encode(), f.read_bytes() if f.is_file() else b""]
        diff = _sha(*parts)
    return {"code.commit": commit.strip(), "code.dirty": dirty, "code.diff": diff}


def code_record(pkg: str | Path | None = None, version: str = __version__) -> dict[str, Any]:
    """The code.* record of the package in `pkg` (default: this raystudy)."""
    pkg = Path(pkg) if pkg is not None else package_dir()
    rec = {"code.id": _sha(source_hash(pkg).encode(), version.encode()), "code.version": version}
    rec.update(_git_record(pkg))
    return {k: rec[k] for k in CODE_KEYS}


@functools.lru_cache(maxsize=None)
def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"env.python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[f"env.{name}"] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[f"env.{name}"] = None
    return out


def environment(device: Any = None, seed: int | None = None) -> dict[str, Any]:
    """env.* of this process: package versions, host, and the device and seed a trial used."""
    env: dict[str, Any] = {**package_versions(), "env.host": socket.gethostname()}
    if device is not None:
        env["env.device"] = str(device)
        env["env.gpu"] = env["env.cuda"] = None
        if getattr(device, "type", str(device).split(":")[0]) == "cuda":
            import torch
            env["env.gpu"] = torch.cuda.get_device_name(device)
            env["env.cuda"] = torch.version.cuda
    if seed is not None:
        env["env.seed"] = int(seed)
    return env


def run_entry(code: dict, trials: int, to_run: int) -> dict[str, Any]:
    """One entry of study.json's `runs`: when, which code, the driver's environment."""
    return {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "trials": trials, "to_run": to_run,
            **code, **environment()}


def with_run(plan: dict, previous: dict | None, entry: dict) -> dict:
    """study.json's record with this run appended to the earlier runs' entries."""
    runs = list((previous or {}).get("runs") or [])
    return {**plan, "runs": runs + [entry]}


# ------------------------------------------------------------------ code on a re-run

def _value(row: dict, key: str) -> Any:
    """row[key], with a table's missing value (None or NaN) as None."""
    v = row.get(key)
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


def describe(row: dict) -> str:
    """'commit abc123def456 (dirty, diff 1a2b3c), raystudy 0.1.0' for a code record or row."""
    if not _value(row, "code.id"):
        return NOT_RECORDED
    commit = _value(row, "code.commit")
    where = f"commit {str(commit)[:12]}" if commit else "no git commit"
    if _value(row, "code.dirty"):
        where += f" (dirty, diff {_value(row, 'code.diff')})"
    return f"{where}, raystudy {_value(row, 'code.version')} [code {row['code.id']}]"


def other_code(rows: dict[str, dict], trial_ids: Iterable[str], code: dict) -> dict[str, list[str]]:
    """{description of the other code: [trial ids]} of the study's completed trials that
    were made by code other than `code` (rows without a code record count as other)."""
    groups: dict[str, list[str]] = {}
    for tid in trial_ids:
        row = rows.get(tid) or {}
        if row.get("status") == "completed" and _value(row, "code.id") != code["code.id"]:
            groups.setdefault(describe(row), []).append(tid)
    return groups


def changed_message(groups: dict[str, list[str]], code: dict) -> str:
    n = sum(len(v) for v in groups.values())
    head = f"{n} finished trial{'s were' if n != 1 else ' was'} made by other code than this run's " \
           f"({describe(code)}):"
    return "\n".join([head] + [f"  {len(ids)}: {what}" for what, ids in groups.items()])


def versions_present(rows: list[dict]) -> list[str]:
    """Lines for `raystudy status`: trials per code record, then each env.* value seen."""
    lines, by_code = [], {}
    for r in rows:
        by_code.setdefault(describe(r), []).append(r)
    for what, rs in sorted(by_code.items(), key=lambda kv: -len(kv[1])):
        lines.append(f"  {len(rs)} trial{'s' if len(rs) != 1 else ''}: {what}")
    keys = sorted({k for r in rows for k in r if k.startswith("env.") and k != "env.seed"})
    for k in keys:
        seen: dict[str, int] = {}
        for r in rows:
            v = _value(r, k)
            if v is not None:
                seen[str(v)] = seen.get(str(v), 0) + 1
        vals = [f"{v} ({c})" if len(seen) > 1 else v for v, c in sorted(seen.items())]
        if vals:
            lines.append(f"  {k[4:]}: {', '.join(vals)}")
    return lines


POLICIES = ("reuse", "rerun", "strict")


def code_policy(rows: dict[str, dict], trial_ids: Iterable[str], code: dict, policy: str = "reuse",
                file: str | None = None) -> tuple[set[str], str | None]:
    """What a re-run does with finished trials made by other code: (ids to run again,
    message to print). `reuse` keeps them (and says so), `rerun` runs them again, `strict`
    refuses with a StudyError (exit 2) before Ray starts."""
    from .errors import StudyError
    groups = other_code(rows, trial_ids, code)
    if not groups:
        return set(), None
    msg = changed_message(groups, code)
    if policy == "strict":
        raise StudyError(msg + "\n", file=file, path="--strict-code",
                         hint="run them again with --rerun-changed-code, reuse them (leave out --strict-code), "
                              "or check out the code they were made by")
    if policy == "rerun":
        return {t for ids in groups.values() for t in ids}, msg + "\n  --rerun-changed-code: running them again"
    return set(), (msg + "\n  their results are REUSED as they are; --rerun-changed-code runs them again, "
                   "--strict-code refuses to mix code")
