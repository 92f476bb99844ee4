"""Models: option validation, unsupported inputs and published sizes. The contract every
registered model must meet (forward, backward, input gradients, modes, checkpoints, copies,
double backward) is in tests/test_contracts.py."""

from __future__ import annotations

import pytest
import torch

from raystudy.data import CIFAR10_STATS, MNIST_STATS, DataInfo
from raystudy.errors import StudyError
from raystudy.registry import MODELS

MNIST = DataInfo(1, 28, 28, 10, *MNIST_STATS)
CIFAR = DataInfo(3, 32, 32, 10, *CIFAR10_STATS)


def test_unknown_and_invalid_options_are_study_errors():
    from raystudy.spec.validate import validate_trial

    def check(model, needle):
        with pytest.raises(StudyError) as e:
            validate_trial({"model": model})
        assert needle in str(e.value), str(e.value)

    check({"arch": "gcnn_minst"}, "did you mean 'gcnn_mnist'")
    check({"arch": "gcnn_mnist", "group": "c5"}, "model.group")
    check({"arch": "gcnn_mnist", "kernel": 4}, "odd")
    check({"arch": "vgg16", "widht": 0.5}, "did you mean 'width'")
    check({"arch": "wrn34_10", "depth": 33}, "6n + 4")
    check({"arch": "sgr_cnn", "params": [1, 2, 3]}, "model.params")
    # Group names are case-insensitive, as the papers write them (C4, D4).
    assert validate_trial({"model": {"arch": "gcnn_mnist", "group": "C8"}}).model.options.group == "c8"


@pytest.mark.parametrize("arch,info", [("gcnn_mnist", DataInfo(1, 30, 30, 10, (0.5,), (0.25,))),
                                       ("vgg16", MNIST), ("sgr_cnn", DataInfo(1, 8, 8, 4, (0.5,), (0.25,)))])
def test_unsupported_input_sizes_are_study_errors(arch, info):
    entry = MODELS.get(arch)
    with pytest.raises(StudyError, match="model.arch"):
        entry.obj(entry.schema(), info)


def test_sgr_cnn_matches_carlini_wagner_sizes():
    """Roth et al.'s CNN = Carlini & Wagner's: 312,202 parameters on MNIST (their
    published count) and [64, 64, 128, 128, 256, 256] on CIFAR-10."""
    from raystudy.models import count_parameters
    entry = MODELS.get("sgr_cnn")
    assert count_parameters(entry.obj(entry.schema(), MNIST)) == 312_202
    cifar = entry.obj(entry.schema(), CIFAR)
    convs = [mod.out_channels for mod in cifar.modules() if isinstance(mod, torch.nn.Conv2d)]
    dense = [mod.out_features for mod in cifar.modules() if isinstance(mod, torch.nn.Linear)]
    assert convs == [64, 64, 128, 128] and dense == [256, 256, 10]
