"""Plain study data: dotted paths into nested dicts/lists (`train.optimizer.lr`,
`evaluate.1.robustness.eps`), copies, and the canonical JSON that ids and hashes are made of."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def _key(container, part: str):
    if isinstance(container, list):
        return int(part)
    return part


def get_path(d: Any, path: str) -> Any:
    cur = d
    for part in path.split("."):
        cur = cur[_key(cur, part)]
    return cur


def has_path(d: Any, path: str) -> bool:
    try:
        get_path(d, path)
        return True
    except (KeyError, IndexError, TypeError, ValueError):
        return False


def set_path(d: dict, path: str, value: Any) -> None:
    parts = path.split(".")
    cur: Any = d
    for part in parts[:-1]:
        k = _key(cur, part)
        if isinstance(cur, dict) and (k not in cur or cur[k] is None):
            cur[k] = {}
        cur = cur[k]
        if not isinstance(cur, (dict, list)):
            raise TypeError(f"'{part}' holds a value, not a section")
    last = parts[-1]
    if isinstance(cur, list):
        cur[int(last)] = value
    else:
        cur[last] = value


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {dotted path: leaf}; lists stay leaves."""
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            p = f"{prefix}.{k}" if prefix else str(k)
            if isinstance(v, dict) and v:
                out.update(flatten(v, p))
            else:
                out[p] = v
    else:
        out[prefix] = d
    return out


def fast_copy(obj: Any) -> Any:
    """Deep copy of plain YAML data (dicts, lists, scalars); much cheaper than copy.deepcopy,
    which matters when a study expands to 100,000 trials."""
    if isinstance(obj, dict):
        return {k: fast_copy(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [fast_copy(v) for v in obj]
    return obj


def canonical(obj: Any) -> str:
    """Order-free JSON text: the form trial ids and data keys hash."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def plain_json(obj: Any) -> Any:
    """`obj` as it reads back from a JSON file (tuples become lists, other objects strings)."""
    return json.loads(json.dumps(obj, default=str))


def digest(flat: dict) -> str:
    """A short hash of a flat {path: value} record (the base fingerprint in study.json)."""
    return hashlib.sha1(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()[:12]


def set_path_shared(d: dict, path: str, value: Any, owned: dict[int, Any]) -> None:
    """set_path on a tree that shares containers with other trees: a container on the way that
    `owned` (id -> container this tree holds a private copy of; the caller lists `d`) does not
    list is copied before it changes, so the shared ones never do. Same errors as set_path."""
    parts = path.split(".")
    cur: Any = d
    for part in parts[:-1]:
        k = _key(cur, part)
        if isinstance(cur, dict) and (k not in cur or cur[k] is None):
            nxt: Any = {}
        else:
            nxt = cur[k]
            if not isinstance(nxt, (dict, list)):
                raise TypeError(f"'{part}' holds a value, not a section")
            if id(nxt) in owned:
                cur = nxt
                continue
            nxt = dict(nxt) if isinstance(nxt, dict) else list(nxt)
        owned[id(nxt)] = nxt
        cur[k] = nxt
        cur = nxt
    last = parts[-1]
    if isinstance(cur, list):
        cur[int(last)] = value
    else:
        cur[last] = value
