"""Search-space expansion: the study's `space:` -> a list of fully resolved trials.

Operators (one key per entry):
  grid: [..]                 every value (cartesian product with other grids)
  choice: [..]               one value drawn per sample
  uniform: [lo, hi]          float drawn per sample
  loguniform: [lo, hi]       float drawn log-uniformly per sample
  randint: [lo, hi]          integer in [lo, hi) drawn per sample
  expr: "..."                derived from other entries / config paths (safe evaluator)
  zip: {path: [..], ...}     several paths varying together, one grid axis
  anything else              a constant

Keys that start with a trial section (seed, data, model, train, evaluate, device) are
paths into the trial config; any other key (e.g. `lr_rule`) is a free variable that
exprs can use and that lands in the result tables. Random draws use a generator seeded
by `tune.seed` and the sample index, so a re-run proposes exactly the same trials
(which is what makes resuming by trial id work).
"""

from __future__ import annotations

import hashlib
import itertools
import math
import random
from dataclasses import dataclass, field
from typing import Any

from ..errors import StudyError
from . import expr as expr_mod
from .configs import Configs, gc_paused, is_config_path, memo_key
from .paths import canonical, fast_copy, flatten

OPERATORS = ("grid", "choice", "uniform", "loguniform", "randint", "expr", "zip")
ONLY = "__only__"   # the rows a zip is restricted to (see _operator)
_SAMPLED = ("choice", "uniform", "loguniform", "randint")
# A guard against typos like num_samples: 100000000 (expansion would run for hours);
# large enough for the 100,000-trial grid of benchmarks/bench_space.py.
MAX_TRIALS = 200_000


@dataclass
class Trial:
    trial_id: str
    params: dict[str, Any]          # varied values by space key (what the tables show)
    config: dict[str, Any]          # the resolved TrialConfig as a plain dict
    index: int = 0
    free: dict[str, Any] = field(default_factory=dict)
    # canonical() text of each config section, in sorted key order, as `expand` computed it
    # for the id: plan's validation finds a section it has validated before by it.
    sections: tuple[str, ...] = field(default=(), repr=False, compare=False)

    def describe(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.params.items())

    def to_ray(self) -> dict:
        return {"trial_id": self.trial_id, "params": self.params, "config": self.config}


def trial_hash(config: dict, free: dict) -> str:
    """A trial's identity: its resolved config (plus free variables). Order-free."""
    return _hash(canonical({"config": config, "free": free}))


_is_path = is_config_path


def _operator(key: str, entry: Any, file: str) -> tuple[str, Any]:
    if isinstance(entry, dict) and len(entry) == 1 and next(iter(entry)) in OPERATORS:
        op, arg = next(iter(entry.items()))
        return op, arg
    if isinstance(entry, dict) and set(entry) == {"zip", "only"}:
        # A zip restricted to some of its rows (`--set variant=3` pins a zip this way): the
        # rows keep their own index, so their trial ids are those of the full study.
        return "zip", {**(entry["zip"] if isinstance(entry["zip"], dict) else {}), ONLY: entry["only"]}
    if isinstance(entry, dict) and any(k in OPERATORS for k in entry):
        raise StudyError("a space entry takes exactly one operator", file=file, path=f"space.{key}",
                         expected="one of " + ", ".join(OPERATORS))
    return "const", entry


def _check(key: str, op: str, arg: Any, file: str) -> None:
    path = f"space.{key}.{op}"
    if op in ("grid", "choice"):
        if not isinstance(arg, list):
            raise StudyError(f"'{op}' needs a list", file=file, path=path, expected="a YAML list like [1, 2]")
        if not arg:
            raise StudyError(f"empty '{op}'", file=file, path=path, expected="at least one value",
                             hint="give a value or remove the entry")
    elif op in ("uniform", "loguniform", "randint"):
        ok = isinstance(arg, list) and len(arg) == 2 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in arg)
        if not ok:
            raise StudyError(f"'{op}' needs [low, high]", file=file, path=path, expected="two numbers")
        lo, hi = arg
        if not lo < hi:
            raise StudyError(f"'{op}' needs low < high (got {lo}, {hi})", file=file, path=path)
        if op == "loguniform" and lo <= 0:
            raise StudyError("'loguniform' needs low > 0", file=file, path=path)
        if op == "randint" and not (float(lo).is_integer() and float(hi).is_integer()):
            raise StudyError("'randint' needs integer bounds", file=file, path=path)
    elif op == "zip":
        only = arg.get(ONLY) if isinstance(arg, dict) else None
        arg = {p: v for p, v in arg.items() if p != ONLY} if isinstance(arg, dict) else arg
        if not isinstance(arg, dict) or not arg:
            raise StudyError("'zip' needs a mapping of paths to equally long lists", file=file, path=path,
                             expected="{train.method.theta: [120, 150], train.method.eps: [2/255, 4/255]}")
        lengths = set()
        for p, vals in arg.items():
            if not isinstance(vals, list) or not vals:
                raise StudyError("each zipped path needs a non-empty list", file=file, path=f"{path}.{p}")
            lengths.add(len(vals))
        if len(lengths) != 1:
            raise StudyError(f"zipped lists differ in length ({sorted(lengths)})", file=file, path=path,
                             expected="lists of the same length")
        if only is not None:
            n = lengths.pop()
            ok = isinstance(only, list) and only and all(
                isinstance(i, int) and not isinstance(i, bool) and 0 <= i < n for i in only)
            if not ok:
                raise StudyError(f"'only' must list row indices of the zip, 0 to {n - 1} (got {only!r})",
                                 file=file, path=f"space.{key}.only", expected=f"e.g. [0] or [0, {n - 1}]",
                                 hint=f"the zip has {n} rows; `--set {key}=I` runs row I only")
    elif op == "expr":
        try:
            expr_mod._parse(arg)  # syntax errors early
        except StudyError as e:
            raise e.located(file=file, prefix=path) from None


def _draw(op: str, arg: Any, rng: random.Random) -> Any:
    if op == "choice":
        return fast_copy(rng.choice(arg))
    lo, hi = arg
    if op == "uniform":
        return rng.uniform(lo, hi)
    if op == "loguniform":
        return math.exp(rng.uniform(math.log(lo), math.log(hi)))
    if op == "randint":
        return rng.randrange(int(lo), int(hi))
    raise AssertionError(op)


def _order_exprs(exprs: dict[str, str], file: str) -> list[str]:
    """Derived entries may use each other: evaluate in dependency order."""
    deps = {k: {n for n in expr_mod.names_in(v) if n in exprs} for k, v in exprs.items()}
    order: list[str] = []
    todo = dict(deps)
    while todo:
        ready = [k for k, d in todo.items() if d <= set(order)]
        if not ready:
            raise StudyError("expressions refer to each other in a cycle: " + ", ".join(todo),
                             file=file, path="space")
        for k in ready:
            order.append(k)
            del todo[k]
    return order


def _plain(v: Any) -> Any:
    # Expression results like 0.1 * 3 should not carry float noise into the trial id.
    if isinstance(v, float):
        return float(f"{v:.12g}")
    return v


def _paths_set(key: str, entry: Any, file: str) -> list[str]:
    """The config paths one space entry writes (a zip writes each of its paths)."""
    op, arg = _operator(key, entry, file)
    if op == "zip" and isinstance(arg, dict):
        return [str(p) for p in arg if p != ONLY and _is_path(str(p))]
    return [key] if _is_path(key) else []


def _check_order(space: dict, file: str) -> None:
    """Entries apply in declaration order, so an entry that writes a whole mapping after one
    that wrote inside it (train.method after train.method.eps) would silently erase it."""
    written: list[tuple[str, str]] = []      # (path, the entry that wrote it)
    for key, entry in space.items():
        key = str(key)
        for p in _paths_set(key, entry, file):
            for q, by in written:
                if q == p or q.startswith(p + "."):
                    raise StudyError(
                        f"'{key}' sets {p}, which overwrites {q} set by the earlier entry '{by}'",
                        file=file, path=f"space.{key}",
                        expected="an entry that sets a mapping declared before the entries that set paths inside it",
                        hint=f"move space.{key} above space.{by} (a profile or smoke override that adds "
                             "a new space entry puts it last)")
            written.append((p, key))


@dataclass
class _Entries:
    """The space's entries sorted by operator; `order` is the declaration order."""

    grids: list[tuple[str, list]] = field(default_factory=list)   # (key, values); zip values are dicts
    sampled: dict[str, tuple[str, Any]] = field(default_factory=dict)
    consts: dict[str, Any] = field(default_factory=dict)
    exprs: dict[str, str] = field(default_factory=dict)
    expr_order: list[str] = field(default_factory=list)
    expr_names: dict[str, list[str]] = field(default_factory=dict)
    # An expression's value by the values of the names it reads: a 100,000-trial grid
    # evaluates `0.05 * train.batch_size / 128` for a handful of distinct batch sizes.
    expr_memo: dict[tuple, Any] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    base: dict[str, Any] = field(default_factory=dict)   # the flattened base config (error messages)


def _entries(space: dict, file: str) -> _Entries:
    es = _Entries()
    for key, entry in space.items():
        key = str(key)
        if not _is_path(key) and not key.replace("_", "a").isalnum():
            raise StudyError(f"free variable '{key}' must be a plain identifier", file=file, path=f"space.{key}",
                             hint="paths into the config start with seed/data/model/train/evaluate")
        op, arg = _operator(key, entry, file)
        _check(key, op, arg, file)
        if op == "grid":
            es.grids.append((key, arg))
        elif op == "zip":
            only = arg.get(ONLY)
            arg = {p: v for p, v in arg.items() if p != ONLY}
            n = len(next(iter(arg.values())))
            rows = list(dict.fromkeys(only)) if only is not None else range(n)
            es.grids.append((key, [{p: arg[p][i] for p in arg} | {"__index__": i} for i in rows]))
        elif op in _SAMPLED:
            es.sampled[key] = (op, arg)
        elif op == "expr":
            es.exprs[key] = arg
        else:
            es.consts[key] = arg
    es.expr_order = _order_exprs(es.exprs, file)
    es.expr_names = {k: sorted(expr_mod.names_in(v)) for k, v in es.exprs.items()}
    es.order = [str(k) for k in space]
    _check_order(space, file)
    return es


def _check_size(n_grid: int, num_samples: int, file: str) -> None:
    # Checked before expanding: a typo like num_samples: 100000000 must not hang validate.
    if n_grid * num_samples > MAX_TRIALS:
        raise StudyError(f"the space expands to {n_grid * num_samples} trials "
                         f"({n_grid} grid points x {num_samples} samples)", file=file,
                         path="space" if n_grid > MAX_TRIALS else "tune.num_samples",
                         expected=f"at most {MAX_TRIALS} trials", hint="split the study or shrink the grid")


def _values(es: _Entries, combo: tuple, rng: random.Random | None, base_flat: dict, file: str) -> dict[str, Any]:
    """Every entry's value at one grid point and sample, in declaration order."""
    values: dict[str, Any] = dict(es.consts)
    for (k, _), v in zip(es.grids, combo):
        values[k] = v
    for k, (op, arg) in es.sampled.items():
        values[k] = _draw(op, arg, rng)
    if not es.expr_order:
        return {k: values[k] for k in es.order if k in values}
    # Build the environment for expressions: base config, then varied values.
    env = dict(base_flat)
    for k, v in values.items():
        if isinstance(v, dict) and "__index__" in v:
            env[k] = v["__index__"]
            env.update({p: pv for p, pv in v.items() if p != "__index__"})
        else:
            env[k] = v
    for k in es.expr_order:
        values[k] = env[k] = _expr_value(es, k, env, file)
    # Applied in the order the space declares them: a later entry may set a path inside
    # what an earlier one set (a zipped train.method, then train.method.eps), whether
    # the later one is a grid or a constant (a grid pinned by --set).
    return {k: values[k] for k in es.order if k in values}


_MISSING = object()
_SCALARS = (int, float, str, bool, type(None))


def _expr_value(es: _Entries, k: str, env: dict, file: str) -> Any:
    # The memo key tells inputs apart as JSON does: 2 and 2.0 give different results (and ids).
    key: tuple | None = (k, *(memo_key(env.get(n, _MISSING)) for n in es.expr_names[k]))
    try:
        if key in es.expr_memo:
            return es.expr_memo[key]
    except TypeError:      # a list or mapping among the inputs: evaluated every time
        key = None
    try:
        v = _plain(expr_mod.evaluate(es.exprs[k], env))
    except StudyError:
        # The environment holds only the base values the expressions name: evaluated again
        # over the whole base, so a mistake gets its did-you-mean from every config path.
        try:
            v = _plain(expr_mod.evaluate(es.exprs[k], {**es.base, **env}))
        except StudyError as e:
            raise e.located(file=file, prefix=f"space.{k}.expr") from None
    if key is not None and type(v) in _SCALARS:
        es.expr_memo[key] = v
    return v


def _trial(values: dict[str, Any], consts: dict[str, Any], idx: int, configs: Configs,
           is_path: dict[str, bool]) -> Trial:
    params: dict[str, Any] = {}
    free: dict[str, Any] = {}
    writes: list[tuple[str, Any, str]] = []
    for k, v in values.items():
        if isinstance(v, dict) and "__index__" in v:
            params[k] = free[k] = v["__index__"]
            for p, pv in v.items():
                if p != "__index__":
                    params[p] = pv
                    writes.append((p, pv, k))
        elif is_path[k]:
            params[k] = v
            writes.append((k, v, k))
        else:
            params[k] = free[k] = v
    # Constants are part of every trial; show only what varies in params.
    for k in consts:
        if k in params and not isinstance(consts[k], dict):
            params.pop(k)
    config, sections, trial_id = configs.build(writes, free)
    # trial_id is trial_hash(config, free), made from the section texts (Configs._id).
    return Trial(trial_id=trial_id, params=params, config=config, index=idx, free=free, sections=sections)


def _hash(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def expand(study) -> list[Trial]:
    """Expand `study.spec.space` over `study.base_config()` into trials."""
    file, spec = study.file, study.spec
    base = study.base_config()
    es = _entries(spec.space or {}, file)
    # Expressions read only the names they mention: each trial's environment starts from
    # those base values instead of a copy of the whole flattened base.
    needed = {n for names in es.expr_names.values() for n in names}
    es.base = flatten(base)
    base_flat = {k: v for k, v in es.base.items() if k in needed}
    keys = [k for k, _ in es.grids]
    _check_size(math.prod(len(v) for _, v in es.grids), spec.tune.num_samples, file)
    combos = list(itertools.product(*[v for _, v in es.grids])) if es.grids else [()]
    configs = Configs(base, file)
    is_path = {k: _is_path(k) for k in es.order}
    trials: list[Trial] = []
    with gc_paused():
        for sample in range(spec.tune.num_samples):
            for combo in combos:
                # Seeded by the grid point's values, not its position: widening a grid must not
                # change the draws (and so the ids) of trials that already ran.
                rng = random.Random(f"{spec.tune.seed}:{sample}:{canonical(list(zip(keys, combo)))}") \
                    if es.sampled else None
                values = _values(es, combo, rng, base_flat, file)
                trials.append(_trial(values, es.consts, len(trials), configs, is_path))
    # Two identical trials (e.g. an expr that collapses two grid values) run once.
    unique: dict[str, Trial] = {}
    for t in trials:
        unique.setdefault(t.trial_id, t)
    return list(unique.values())


def trial_from_values(study, values: dict[str, Any], base: dict | None = None) -> Trial:
    """The trial of `study` whose varied entries take `values` (a searcher's proposal, by space
    key); constants apply as in `expand`, so the trial id is the one expansion would give."""
    file = study.file
    es = _entries(study.spec.space or {}, file)
    chosen = {k: values[k] if k in values else es.consts[k] for k in es.order if k in values or k in es.consts}
    configs = Configs(study.base_config() if base is None else base, file)
    return _trial(chosen, es.consts, 0, configs, {k: _is_path(k) for k in chosen})
