"""Fast expansion and validation (issue 20 item 2): trial configs share untouched sections,
ids come from per-section canonical texts, each distinct section is validated once. Every
shortcut must give exactly what the plain path gives: the same ids (trial_hash of the
config), the same validated trials and the same errors."""

import gc
import glob

import pytest

from raystudy.errors import StudyError
from raystudy.spec.configs import gc_paused
from raystudy.spec.load import load_document, load_study
from raystudy.spec.paths import canonical, set_path, set_path_shared
from raystudy.spec.space import expand, trial_hash
from raystudy.spec.validate import TrialValidator, validate_trial

BASE = {
    "name": "t",
    "data": {"dataset": "synthetic", "train_size": 64, "test_size": 32},
    "model": {"arch": "stdcnn_mnist"},
    "train": {"epochs": 1, "batch_size": 128, "optimizer": {"name": "sgd", "lr": 0.05}},
    "evaluate": ["accuracy", {"robustness": {"attack": "fgsm", "eps": [0, 0.1]}}],
}


def study(space, **tune):
    doc = dict(BASE, space=space)
    if tune:
        doc["tune"] = tune
    return load_document(doc)


SPACES = [
    {"train.batch_size": {"grid": [32, 64]}, "seed": {"grid": [0, 1, 2]}},
    # Values equal in Python but not in JSON must give different trials.
    {"train.optimizer.weight_decay": {"grid": [0, 0.0, -0.0, 1, 1.0]}, "train.optimizer.momentum": {"grid": [0, 0.5]}},
    {"flag": {"grid": [True, 1]}, "train.epochs": {"expr": "2 if flag else 3"}},
    # A zipped mapping, then a path inside it (declaration order).
    {"m": {"zip": {"train.method": [{"name": "pgd_at", "eps": 0.3}, {"name": "pgd_at", "eps": 0.1}]}},
     "train.method.eps": 0.2, "seed": {"grid": [0, 1]}},
    # Paths through lists and new keys; list values (not memoizable).
    {"evaluate.1.robustness.eps": {"grid": [[0, 0.1], [0, 0.2]]}, "model.channels": {"grid": [[4, 4, 8, 8], [8, 8, 16, 16]]}},
    {"train.optimizer.lr": {"loguniform": [0.001, 0.1]}, "train.augment.rotation": {"uniform": [0, 90]}},
    {"lr_rule": {"grid": ["fixed", "ratio"]}, "train.batch_size": {"grid": [64, 256]},
     "train.optimizer.lr": {"expr": "0.05 if lr_rule == 'fixed' else 0.05 * train.batch_size / 128"}},
]


@pytest.mark.parametrize("space", SPACES)
def test_ids_hash_exactly_the_canonical_config(space):
    s = study(space, **({"num_samples": 3} if "loguniform" in str(space) else {}))
    assert len(s.trials) > 1
    for t in s.trials:
        assert t.trial_id == trial_hash(t.config, t.free)
        assert t.sections == tuple(canonical(t.config[k]) for k in sorted(t.config))


def test_json_distinct_values_stay_distinct():
    s = study(SPACES[1])
    assert len(s.trials) == 10
    wds = sorted(canonical(t.config["train"]["optimizer"]["weight_decay"]) for t in s.trials)
    assert wds == sorted(["0", "0.0", "-0.0", "1", "1.0"] * 2)


def test_shipped_studies_expand_to_the_canonical_ids():
    files = sorted(glob.glob("studies/**/*.yaml", recursive=True))
    assert files
    for f in files:
        for t in load_study(f, smoke=True).trials:
            assert t.trial_id == trial_hash(t.config, t.free), f


def test_configs_share_untouched_sections_and_never_change_the_base():
    s = study({"train.optimizer.lr": {"grid": [0.1, 0.2]}, "seed": {"grid": [0, 1]}})
    base = s.base_config()
    by = {(t.config["seed"], t.config["train"]["optimizer"]["lr"]): t.config for t in s.trials}
    a, b, c = by[(0, 0.1)], by[(1, 0.1)], by[(0, 0.2)]
    # Untouched sections: one object for all trials; same values: the same train section.
    assert a["model"] is b["model"] is c["model"]
    assert a["train"] is b["train"]
    # Changed containers are private copies; what they did not change is still shared.
    assert a["train"] is not c["train"] and a["train"]["optimizer"] is not c["train"]["optimizer"]
    assert a["train"]["augment"] is c["train"]["augment"]
    assert a["train"]["optimizer"]["lr"] == 0.1 and c["train"]["optimizer"]["lr"] == 0.2
    assert s.base_config() == base


def test_set_path_shared_copies_only_the_written_path():
    shared = {"a": {"b": {"c": 1}, "d": [1, {"e": 2}]}, "f": {"g": 3}}
    before = canonical(shared)
    tree = dict(shared)
    owned = {id(tree): tree}
    set_path_shared(tree, "a.b.c", 5, owned)
    set_path_shared(tree, "a.d.1.e", 7, owned)
    set_path_shared(tree, "a.new.x", 9, owned)
    assert canonical(shared) == before
    assert tree["f"] is shared["f"] and tree["a"] is not shared["a"]
    plain = {"a": {"b": {"c": 1}, "d": [1, {"e": 2}]}, "f": {"g": 3}}
    for p, v in (("a.b.c", 5), ("a.d.1.e", 7), ("a.new.x", 9)):
        set_path(plain, p, v)
    assert tree == plain
    # The same errors as set_path.
    for bad in ("a.b.c.x", "a.d.5.e", "a.d.x.e"):
        errs = []
        for fn in (lambda: set_path({"a": {"b": {"c": 1}, "d": [1, {"e": 2}]}}, bad, 0),
                   lambda: set_path_shared(dict(shared), bad, 0, {})):
            try:
                fn()
            except (KeyError, IndexError, TypeError, ValueError) as e:
                errs.append((type(e), str(e)))
        assert len(errs) == 2 and errs[0] == errs[1], bad


def test_validator_matches_validate_trial_on_shipped_studies():
    for f in sorted(glob.glob("studies/**/*.yaml", recursive=True)):
        s = load_study(f, smoke=True)
        v = TrialValidator(s.file)
        for t in s.trials:
            assert v(t.config, t.sections) == validate_trial(t.config, s.file), f


def test_each_distinct_section_is_validated_once():
    s = study({"train.optimizer.lr": {"grid": [0.01, 0.02, 0.03, 0.04]}, "seed": {"grid": list(range(25))}})
    v = TrialValidator(s.file)
    parsed = [v(t.config, t.sections) for t in s.trials]
    assert len(parsed) == 100
    # "head": seed, device, model and evaluate together, one per seed here.
    assert v.validated == {"data": 1, "train": 4, "model": 1, "evaluate": 1, "head": 25}
    # Trials with the same train section share its validated objects; seeds stay their own.
    by_lr = {}
    for p in parsed:
        by_lr.setdefault(p.cfg.train.optimizer["lr"], set()).add(id(p.cfg.train))
    assert all(len(ids) == 1 for ids in by_lr.values())
    assert sorted({p.cfg.seed for p in parsed}) == list(range(25))


def test_a_bad_section_reports_exactly_what_validate_trial_reports():
    s = study({"train.optimizer.lr": {"grid": [0.1, 0.2]}}, num_samples=1)
    t = s.trials[0]
    bad = dict(t.config, train={**t.config["train"], "optimizer": {"name": "sgd", "lr": 0.1, "momentun": 0.9}})
    with pytest.raises(StudyError) as want:
        validate_trial(bad, "f.yaml")
    with pytest.raises(StudyError) as got:
        TrialValidator("f.yaml")(bad, tuple(canonical(bad[k]) for k in sorted(bad)))
    assert str(got.value) == str(want.value)
    # A study with the mistake in one grid value names that trial, as before.
    with pytest.raises(StudyError) as ei:
        study({"train.optimizer": {"grid": [{"name": "sgd", "lr": 0.1}, {"name": "sgd", "lr": 0.1, "momentun": 0.9}]}})
    assert "momentun" in str(ei.value) and "did you mean 'momentum'" in str(ei.value)


def test_gc_is_paused_only_while_planning():
    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()   # a caller's own choice stays
    finally:
        gc.enable()
    study({"seed": {"grid": [0, 1]}})
    assert gc.isenabled()


def test_expand_is_repeatable():
    s = study(SPACES[5], num_samples=4)
    again = expand(s)
    assert [t.trial_id for t in again] == [t.trial_id for t in s.trials]


def test_expression_results_are_memoized_by_json_identity():
    s = study({"x": {"grid": [0.0, -0.0, 0, 2, 2.0]}, "train.optimizer.weight_decay": {"expr": "x * 1"}})
    got = sorted((canonical(t.params["x"]), canonical(t.config["train"]["optimizer"]["weight_decay"]))
                 for t in s.trials)
    assert got == sorted([("0.0", "0.0"), ("-0.0", "-0.0"), ("0", "0"), ("2", "2"), ("2.0", "2.0")])
    for t in s.trials:
        assert t.trial_id == trial_hash(t.config, t.free)
