"""Contract test over the whole model registry: every entry, on a tiny batch, must
behave like a plain torch model for training, attacks (input gradients), Hessians
(repeated and double backward in eval mode), checkpoints and copies.

escnn's R2Conv breaks several of these in eval mode (see PITFALLS and
tests/test_gcnn.py::test_raw_escnn_r2conv_has_the_pitfalls); the GCNNs here must not.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F

from raystudy.data import CIFAR10_STATS, MNIST_STATS, DataInfo
from raystudy.errors import StudyError
from raystudy.registry import MODELS

MNIST = DataInfo(1, 28, 28, 10, *MNIST_STATS)
CIFAR = DataInfo(3, 32, 32, 10, *CIFAR10_STATS)
# The contract does not depend on image size: smaller inputs keep the CPU test quick.
GRAY = DataInfo(1, 20, 20, 10, *MNIST_STATS)
COLOR = DataInfo(3, 16, 16, 10, *CIFAR10_STATS)

# Small instances of each model (the contract depends on neither width nor input size;
# vgg16 needs sides divisible by 32). A model registered later and missing here is
# still tested, at its defaults on MNIST input.
SMALL = {
    "stdcnn_mnist": (GRAY, {"channels": [4, 4, 8, 8], "hidden": 16, "batchnorm": True, "dropout": 0.1}),
    "gcnn_mnist": (GRAY, {"channels": [4, 4, 8, 8], "hidden": 16, "batchnorm": True, "dropout": 0.1}),
    "gcnn_mnist[c8]": (GRAY, {"group": "c8", "channels": [4, 4, 8, 8], "hidden": 16}),
    "gcnn_mnist[d4]": (GRAY, {"group": "d4", "channels": [4, 4, 8, 8], "hidden": 16}),
    "vgg16": (CIFAR, {"width": 1 / 16}),
    "gcnn_vgg16": (CIFAR, {"width": 1 / 16}),
    "resnet18": (COLOR, {"width": 1 / 16}),
    "gcnn_resnet18": (COLOR, {"width": 1 / 16}),
    "gcnn_resnet18[c8, no bn]": (COLOR, {"group": "c8", "width": 1 / 16, "batchnorm": False}),
    "lenet_madry": (GRAY, {"channels": [4, 8], "hidden": 16}),
    "resnet_madry": (COLOR, {"widen": 1, "units": 2}),
    "resnet_madry[dataset stats]": (COLOR, {"widen": 1, "units": 1, "per_image": False}),
    "wrn34_10": (COLOR, {"depth": 10, "widen": 1}),
    "sgr_cnn": (GRAY, {"params": [4, 4, 8, 8, 16, 16]}),
    "sgr_cnn[cifar]": (COLOR, {"params": [4, 4, 8, 8, 16, 16], "dropout": 0.5}),
    "mlp": (GRAY, {"hidden": [32, 16], "dropout": 0.1}),
}


def _cases():
    cases = dict(SMALL)
    for name in MODELS.names():
        cases.setdefault(name, (MNIST, {}))
    return sorted(cases)


CASES = _cases()
_built: dict[str, torch.nn.Module] = {}


def _arch(case: str) -> str:
    return case.split("[")[0]


def build(case: str, seed: int = 0) -> torch.nn.Module:
    info, opts = SMALL.get(case, (MNIST, {}))
    entry = MODELS.get(_arch(case))
    torch.manual_seed(seed)
    return entry.obj(entry.schema.model_validate(opts), info)


def fresh(case: str) -> torch.nn.Module:
    """A copy of a cached, pristine train-mode model (escnn builds are slow-ish)."""
    if case not in _built:
        _built[case] = build(case)
    return copy.deepcopy(_built[case]).train()


_other: dict[str, torch.nn.Module] = {}


def other(case: str) -> torch.nn.Module:
    """A differently initialized instance (train mode), to load checkpoints into."""
    if case not in _other:
        _other[case] = build(case, seed=123)
    return copy.deepcopy(_other[case]).train()


def batch(case: str, n: int = 4, seed: int = 1):
    info = SMALL.get(case, (MNIST, {}))[0]
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, info.channels, info.height, info.width, generator=g)
    y = torch.randint(0, info.num_classes, (n,), generator=g)
    return x, y


def test_every_registered_model_is_covered():
    assert set(MODELS.names()) <= {_arch(c) for c in CASES}
    expected = {"stdcnn_mnist", "gcnn_mnist", "vgg16", "gcnn_vgg16", "resnet18", "gcnn_resnet18",
                "lenet_madry", "resnet_madry", "wrn34_10", "sgr_cnn", "mlp"}
    assert expected <= set(MODELS.names())


@pytest.mark.parametrize("case", CASES)
def test_forward_gives_plain_finite_logits(case):
    m = fresh(case)
    x, _ = batch(case)
    classes = SMALL.get(case, (MNIST, {}))[0].num_classes
    for mode in (True, False):
        m.train(mode)
        y = m(x)
        assert type(y) is torch.Tensor          # not an escnn GeometricTensor
        assert y.shape == (len(x), classes) and y.dtype == torch.float32
        assert torch.isfinite(y).all()
    # The logits depend on the input (a constant model would pass the rest trivially).
    assert (y[0] - y[1]).abs().max() > 1e-6


@pytest.mark.parametrize("case", CASES)
def test_backward_reaches_every_parameter(case):
    m = fresh(case)
    x, y = batch(case, n=8)
    F.cross_entropy(m(x), y).backward()
    for name, p in m.named_parameters():
        assert p.grad is not None, f"{name} gets no gradient"
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} has an all-zero gradient"


@pytest.mark.parametrize("case", CASES)
def test_input_gradient_in_eval_mode(case):
    m = fresh(case).eval()
    x, y = batch(case)
    x.requires_grad_(True)
    F.cross_entropy(m(x), y).backward()
    assert x.grad is not None and x.grad.shape == x.shape
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("case", CASES)
def test_train_eval_round_trip_reproduces_outputs(case):
    m = fresh(case).eval()
    x, _ = batch(case)
    with torch.no_grad():
        y0 = m(x)
    m.train()
    assert all(mod.training for mod in m.modules())
    m.eval()
    assert not any(mod.training for mod in m.modules())
    with torch.no_grad():
        y1 = m(x)
    torch.testing.assert_close(y1, y0, rtol=0, atol=0)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("save_mode,load_mode", [("eval", "train"), ("train", "eval")])
def test_state_dict_round_trip_across_modes(case, save_mode, load_mode):
    src = fresh(case)
    x, y = batch(case, n=8)
    # One train step so that weights and batch-norm statistics differ from init.
    opt = torch.optim.SGD(src.parameters(), lr=0.05)
    F.cross_entropy(src(x), y).backward()
    opt.step()
    getattr(src, save_mode)()
    buf = io.BytesIO()
    torch.save(src.state_dict(), buf)
    buf.seek(0)
    dst = other(case)
    getattr(dst, load_mode)()
    dst.load_state_dict(torch.load(buf, weights_only=True), strict=True)
    src.eval()
    dst.eval()
    with torch.no_grad():
        torch.testing.assert_close(dst(x), src(x), rtol=0, atol=0)
        assert not torch.equal(other(case).eval()(x), src(x))


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_deepcopy_is_independent_and_equal(case, mode):
    m = getattr(fresh(case), mode)()
    x, _ = batch(case)
    with torch.no_grad():
        ref = m.eval()(x)
    getattr(m, mode)()
    c = copy.deepcopy(m)
    assert c.training == m.training
    with torch.no_grad():
        torch.testing.assert_close(c.eval()(x), ref, rtol=0, atol=0)
        for p in c.parameters():
            p.add_(0.1)
        torch.testing.assert_close(m.eval()(x), ref, rtol=0, atol=0)


@pytest.mark.parametrize("case", CASES)
def test_repeated_and_double_backward_in_eval_mode(case):
    """What Hessian tools do: several parameter-gradient backwards and Hessian-vector
    products in eval mode. The Hessian is symmetric: u.(Hv) == v.(Hu)."""
    m = fresh(case).eval()
    x, y = batch(case)
    params = [p for p in m.parameters() if p.requires_grad]
    grads = []
    for _ in range(2):
        grads.append(torch.autograd.grad(F.cross_entropy(m(x), y), params))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)
    g = torch.Generator().manual_seed(7)
    u = [torch.randn(p.shape, generator=g) for p in params]
    v = [torch.randn(p.shape, generator=g) for p in params]

    def hvp(vec):
        gr = torch.autograd.grad(F.cross_entropy(m(x), y), params, create_graph=True)
        dot = sum((a * b).sum() for a, b in zip(gr, vec))
        return torch.autograd.grad(dot, params)

    hu, hv = hvp(u), hvp(v)
    uhv = sum((a * b).sum() for a, b in zip(u, hv))
    vhu = sum((a * b).sum() for a, b in zip(v, hu))
    assert torch.isfinite(uhv) and uhv.abs() > 0
    torch.testing.assert_close(uhv, vhu, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("case", CASES)
def test_eval_under_no_grad_keeps_parameter_gradients(case):
    m = fresh(case)
    with torch.no_grad():
        m.eval()
    x, y = batch(case)
    F.cross_entropy(m(x), y).backward()
    assert all(p.grad is not None for p in m.parameters())


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
