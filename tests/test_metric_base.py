"""The metric template's shared options: defaults each metric keeps, options a metric does not
take, `every_epochs` during training, and x-axis titles that follow the attack's norm."""

from __future__ import annotations

import json

import pytest
import torch

from raystudy.errors import StudyError
from raystudy.registry import METRICS
from raystudy.spec.validate import validate_trial

BASE = {"model": {"arch": "stdcnn_mnist"}}


def options(item):
    return validate_trial({**BASE, "evaluate": [item]}).metrics[0].options


# metric -> (split, n) it measures by default: the values study files relied on before the template.
DEFAULTS = {
    "robustness": ("test", 1000), "invariance": ("test", 1000), "boundary_distance": ("test", 1000),
    "invariant_directions": ("test", 64), "perturbation_pca": ("test", 500),
    "perturbation_covariance": ("test", 500), "lrc_noise": ("test", 500),
}


@pytest.mark.parametrize("name", sorted(DEFAULTS))
def test_each_metric_keeps_its_own_defaults(name):
    o = options(name)
    assert (o.split, o.n, o.seed, o.batch_size, o.every_epochs) == (*DEFAULTS[name], 0, None, None)
    assert METRICS.get(name).obj.subsets(o) == [DEFAULTS[name]]


def test_metrics_that_size_their_subset_otherwise():
    acc = options("accuracy")
    assert METRICS.get("accuracy").obj.subsets(acc) == [("test", None), ("val", None)]
    h = options("hessian")
    assert (h.split, h.samples, h.batch_size) == ("train", 1024, 256)
    assert METRICS.get("hessian").obj.subsets(h) == [("train", 1024)]
    s = options({"svd_universal": {"n_fit": 16, "n_eval": 100}})
    assert METRICS.get("svd_universal").obj.subsets(s) == [("test", 116)]


def test_accuracy_takes_one_split_or_a_list():
    assert METRICS.get("accuracy").obj.subsets(options({"accuracy": {"split": "val", "n": 5}})) == [("val", 5)]
    with pytest.raises(StudyError, match="either 'split' or 'splits'"):
        options({"accuracy": {"split": "val", "splits": ["test"]}})


@pytest.mark.parametrize("item,path,needle", [
    ({"svd_universal": {"n": 100}}, "evaluate.0.svd_universal.n", "n_fit"),
    ({"hessian": {"n": 100}}, "evaluate.0.hessian.n", "samples"),
    ({"robustness": {"every_epochs": 0}}, "evaluate.0.robustness.every_epochs", "greater than or equal to 1"),
    ({"lrc_noise": {"split": "train"}}, "evaluate.0.lrc_noise.split", "test"),
])
def test_shared_options_a_metric_does_not_take_are_errors_at_their_key(item, path, needle):
    with pytest.raises(StudyError) as e:
        options(item)
    assert path in str(e.value) and needle in str(e.value), str(e.value)


def test_robustness_x_title_follows_the_attack_norm(mnist_small):
    from helpers import run_metric
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)).eval()
    linf = run_metric("robustness", model, mnist_small, attack="fgsm", eps=[0, 0.1], n=8, acc_at=[])
    l2 = run_metric("robustness", model, mnist_small, attack="deepfool_batched", eps=[0, 1], n=8, steps=2)
    assert {r["x_title"] for r in linf.curves} == {"ε (L∞ pixel units)"}
    assert {r["x_title"] for r in l2.curves} == {"ε (L2)"}


def test_every_epochs_and_at_epochs_take_metrics_during_training():
    from raystudy.data import load
    from raystudy.execute import NullReporter, run_trial
    from raystudy.spec.schema import DataSpec
    data = {"dataset": "synthetic", "train_size": 64, "test_size": 32, "val_fraction": 0.25}
    cfg = {"seed": 0, "device": "cpu", "data": data,
           "model": {"arch": "stdcnn_mnist", "channels": [4, 4, 8, 8], "hidden": 16},
           "train": {"epochs": 4, "batch_size": 32, "optimizer": {"name": "adam", "lr": 0.003}},
           "evaluate": [{"accuracy": {"split": "val", "every_epochs": 2}},
                        {"hessian": {"samples": 16, "batch_size": 16, "max_iter": 2, "trace": False,
                                     "at_epochs": [1], "every_epochs": 3}}]}
    rep = NullReporter()
    final = run_trial({"trial_id": "t", "params": {}, "config": cfg}, load(DataSpec(**data)), rep)
    rows = json.loads(final["_curves"])
    at = {r["metric"]: sorted(x["x"] for x in rows if x["metric"] == r["metric"]) for r in rows}
    # every_epochs: on the validation split, every k-th epoch and the last, named `val.<scalar>`;
    # at_epochs: on the metric's own split, under the scalar's own name.
    assert at["val.accuracy.val@epoch"] == [2, 4]
    assert at["val.hessian.top1@epoch"] == [3, 4]
    assert at["hessian.top1@epoch"] == [1]
    assert all(r["x_title"] == "epoch" for r in rows if r["metric"].endswith("@epoch"))
    # The scalars ride on their epoch's report, with the time they took.
    assert [("val.accuracy.val" in e, "val.hessian.top1" in e, "hessian.top1" in e) for e in rep.epochs] == \
        [(False, False, True), (True, False, False), (False, True, False), (True, True, False)]
    assert all(e["time.accuracy@epoch_s"] > 0 for e in rep.epochs if "val.accuracy.val" in e)
    # The validation numbers during training are never the final test-split ones.
    assert not any(k.startswith("val.") for k in final)
    assert "accuracy.val" in final and final["time.accuracy_s"] > 0
