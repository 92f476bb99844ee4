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


# ------------------------------------------------------------- input_transform (every model)

def test_every_model_takes_input_transform():
    from raystudy.models.base import ModelOptions
    for name in MODELS.names():
        assert issubclass(MODELS.get(name).schema, ModelOptions), name
    from raystudy.spec.validate import validate_trial
    with pytest.raises(StudyError, match="model.input_transform"):
        validate_trial({"model": {"arch": "mlp", "input_transform": {"name": "quantize", "levels": 1}}})
    with pytest.raises(StudyError, match="model.input_transform"):
        validate_trial({"model": {"arch": "mlp", "input_transform": {"name": "blur"}}})


@pytest.mark.parametrize("spec,expect", [({"name": "binarize", "threshold": 0.5}, lambda x: (x > 0.5).float()),
                                         ({"name": "quantize", "levels": 3}, lambda x: torch.round(x * 2) / 2)])
def test_input_transform_is_applied_in_front_with_zero_input_gradient(spec, expect):
    from raystudy.models import build_model
    from raystudy.spec.validate import validate_trial
    info = DataInfo(1, 8, 8, 4, (0.5,), (0.25,))
    plain = build_model(validate_trial({"model": {"arch": "mlp", "hidden": [16]}}).model, info).eval()
    masked = build_model(validate_trial({"model": {"arch": "mlp", "hidden": [16],
                                                   "input_transform": spec}}).model, info).eval()
    # The same keys: a checkpoint loads with or without the transform.
    assert masked.state_dict().keys() == plain.state_dict().keys()
    masked.load_state_dict(plain.state_dict())
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    out = masked(x)
    torch.testing.assert_close(out, plain(expect(x.detach())))
    assert not torch.allclose(out, plain(x))
    g, = torch.autograd.grad(out.sum(), x)
    assert (g == 0).all()
    # Without the transform the same model has an input gradient.
    g, = torch.autograd.grad(plain(x).sum(), x)
    assert (g != 0).any()
