"""Property: `raystudy validate` on any file, however broken, answers ok (exit 0) or
'error: ...' (exit 2) and never raises. Inputs: random text, random YAML documents,
and a valid study mutated at a random path (value replaced, key deleted or added,
text edited), plus random space entries and `expr` strings."""

from __future__ import annotations

import atexit
import contextlib
import copy
import io
import os
import shutil
import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raystudy.cli import main

VALID = {
    "name": "fuzz",
    "data": {"dataset": "synthetic", "train_size": 64, "test_size": 32},
    "model": {"arch": "stdcnn_mnist", "channels": [4, 4, 8, 8], "hidden": 16},
    "train": {"epochs": 1, "batch_size": 32, "optimizer": {"name": "sgd", "lr": 0.05},
              "schedule": {"name": "multistep", "milestones": [1], "gamma": 0.1},
              "method": {"name": "pgd_at", "eps": "8/255", "steps": 2},
              "augment": {"rotation": 30}},
    "space": {"seed": {"grid": [0, 1]}, "lr_rule": {"grid": ["fixed", "ratio"]},
              "train.optimizer.lr": {"expr": "0.05 if lr_rule == 'fixed' else 0.05 * train.batch_size / 128"}},
    "evaluate": ["accuracy", {"robustness": {"attack": "fgsm", "eps": [0, "8/255"]}}],
    "resources": {"cpu": 1, "gpu": 0},
    "tune": {"num_samples": 1, "retries": 1},
}
VALID_TEXT = yaml.safe_dump(VALID, sort_keys=False)

KEYS = ["name", "data", "model", "train", "space", "evaluate", "resources", "tune", "arch", "epochs",
        "batch_size", "optimizer", "lr", "method", "eps", "grid", "expr", "zip", "choice", "uniform",
        "seed", "train.epochs", "train.optimizer.lr", "rotation", "gpu", "cpu", "num_samples", "dataset",
        "stages", "profiles", "smoke", "report", "randint", "loguniform"]
EXPR_TOKENS = ["train.batch_size", "seed", "lr_rule", "0.1", "2", "-3", "64", "1e308", "**", "+", "-", "*",
               "/", "//", "%", "(", ")", "if", "else", "==", "<", "and", "or", "not", "'fixed'", "min(",
               "max(", "log(", ",", "__import__", ".", "[", "]", "lambda", ":", "True", "None", "in"]

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
                    st.sampled_from(["8/255", "1/0", "stdcnn_mnist", "sgd", "natural", "accuracy", "mnist",
                                     "cifar10", "synthetic", "pgd", "-1", "1e9"]))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3),
    st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=6)), inner, max_size=3)), max_leaves=8)
exprs = st.lists(st.sampled_from(EXPR_TOKENS), min_size=1, max_size=8).map(" ".join)
space_entries = st.one_of(
    st.builds(lambda v: {"grid": v}, st.lists(scalars, max_size=3)),
    st.builds(lambda v: {"choice": v}, st.lists(scalars, max_size=3)),
    st.builds(lambda op, a, b: {op: [a, b]}, st.sampled_from(["uniform", "loguniform", "randint"]),
              scalars, scalars),
    st.builds(lambda e: {"expr": e}, exprs),
    st.builds(lambda d: {"zip": d}, st.dictionaries(st.sampled_from(["seed", "train.epochs", "lr_rule"]),
                                                    st.lists(scalars, max_size=3), max_size=2)),
    values,
)

_DIR = Path(tempfile.mkdtemp(prefix="raystudy-fuzz-"))
atexit.register(shutil.rmtree, _DIR, ignore_errors=True)
FUZZ = settings(max_examples=int(os.environ.get("RAYSTUDY_FUZZ_EXAMPLES", "120")), deadline=None, suppress_health_check=[HealthCheck.too_slow])


def validate_text(text: str) -> None:
    f = _DIR / "study.yaml"
    f.write_text(text)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["validate", str(f)])  # an uncaught exception fails the property
    assert rc in (0, 2)
    if rc == 0:
        assert out.getvalue().startswith("ok: ")
    else:
        assert err.getvalue().startswith("error: ") and "Traceback" not in err.getvalue()


def _paths(d, prefix=()):
    yield prefix
    if isinstance(d, dict):
        for k, v in d.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(d, list):
        for i, v in enumerate(d):
            yield from _paths(v, prefix + (i,))


def test_the_unmutated_study_is_valid():
    validate_text(VALID_TEXT)


@FUZZ
@given(st.text(max_size=300))
def test_random_text(text):
    validate_text(text)


@FUZZ
@given(st.dictionaries(st.sampled_from(KEYS), values, max_size=8))
def test_random_documents(doc):
    validate_text(yaml.safe_dump(doc))


@FUZZ
@given(st.data())
def test_mutated_study(data):
    doc = copy.deepcopy(VALID)
    for _ in range(data.draw(st.integers(1, 3))):
        paths = [p for p in _paths(doc) if p]
        path = data.draw(st.sampled_from(paths))
        parent = doc
        for k in path[:-1]:
            parent = parent[k]
        action = data.draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "replace":
            parent[path[-1]] = data.draw(values)
        elif action == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[data.draw(st.sampled_from(KEYS))] = data.draw(values)
    validate_text(yaml.safe_dump(doc))


@FUZZ
@given(st.dictionaries(st.sampled_from(["seed", "lr_rule", "train.epochs", "train.optimizer.lr",
                                        "train.method.eps", "train.augment.rotation", "x", "data.train_size",
                                        "model.hidden", "train", "tune.seed", "space.seed"]),
                       space_entries, max_size=4))
def test_random_space(space):
    doc = copy.deepcopy(VALID)
    doc["space"] = space
    validate_text(yaml.safe_dump(doc))


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(VALID_TEXT)), st.integers(0, 3),
                          st.text(alphabet=" :-[]{}'\"#&*!|>%@`,\n\t0123456789abc", max_size=3)),
                min_size=1, max_size=4))
def test_text_edits(edits):
    text = VALID_TEXT
    for pos, drop, insert in edits:
        pos = min(pos, len(text))
        text = text[:pos] + insert + text[pos + drop:]
    validate_text(text)
