"""External models (issue 21 item 3): `checkpoint`, `torchscript` and `robustbench` load
files the tests write themselves and must give exactly the logits of the model that wrote
them; bad files and options are StudyErrors naming the file and key path."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from raystudy.data import DataInfo
from raystudy.errors import StudyError
from raystudy.execute import run_trial
from raystudy.models import build_model
from raystudy.spec.validate import validate_trial

TINY = {"channels": [4, 4, 8, 8], "hidden": 16, "batchnorm": True}
DATA = {"dataset": "synthetic", "train_size": 64, "test_size": 32}
GRAY = DataInfo(1, 12, 12, 4, (0.5,), (0.25,))
COLOR = DataInfo(3, 16, 16, 10, (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))


def _config(model: dict, epochs: int = 0, evaluate=("accuracy",)) -> dict:
    return {"seed": 0, "device": "cpu", "data": DATA, "model": model,
            "train": {"epochs": epochs, "batch_size": 32}, "evaluate": list(evaluate)}


def _model(model: dict, info=GRAY) -> nn.Module:
    return build_model(validate_trial(_config(model)).model, info)


def _trained_stdcnn(seed: int = 3) -> nn.Module:
    """A tiny StdCNN whose weights and batch-norm statistics differ from any fresh build."""
    torch.manual_seed(seed)
    m = _model({"arch": "stdcnn_mnist", **TINY})
    x = torch.rand(16, 1, 12, 12)
    y = torch.randint(0, 4, (16,))
    F.cross_entropy(m(x), y).backward()
    with torch.no_grad():
        for p in m.parameters():
            p.sub_(0.1 * p.grad)
    return m.eval()


def _x(info=GRAY, n=6):
    return torch.rand(n, info.channels, info.height, info.width, generator=torch.Generator().manual_seed(9))


# -------------------------------------------------------------------- checkpoint

def test_checkpoint_gives_exactly_the_logits_of_the_model_that_wrote_it(tmp_path):
    src = _trained_stdcnn()
    torch.save(src.state_dict(), tmp_path / "w.pt")
    m = _model({"arch": "checkpoint", "path": str(tmp_path / "w.pt"), "base": "stdcnn_mnist",
                "base_options": TINY}).eval()
    with torch.no_grad():
        torch.testing.assert_close(m(_x()), src(_x()), rtol=0, atol=0)


def test_an_external_model_takes_the_input_transform_defence(tmp_path):
    # The masked-gradient positive control works on models raystudy did not train too.
    src = _trained_stdcnn()
    torch.save(src.state_dict(), tmp_path / "w.pt")
    m = _model({"arch": "checkpoint", "path": str(tmp_path / "w.pt"), "base": "stdcnn_mnist",
                "base_options": TINY, "input_transform": {"name": "binarize", "threshold": 0.5}}).eval()
    x = _x().requires_grad_(True)
    m(x).sum().backward()
    assert x.grad is not None and torch.count_nonzero(x.grad) == 0
    with torch.no_grad():
        torch.testing.assert_close(m(_x()), src((_x() > 0.5).float()), rtol=0, atol=0)


def test_checkpoint_reads_a_training_checkpoint_under_key_with_a_dataparallel_prefix(tmp_path):
    src = _trained_stdcnn()
    state = {"module." + k: v for k, v in src.state_dict().items()}
    torch.save({"epoch": 7, "state_dict": state}, tmp_path / "ckpt.pt")
    m = _model({"arch": "checkpoint", "path": str(tmp_path / "ckpt.pt"), "base": "stdcnn_mnist",
                "base_options": TINY, "key": "state_dict"}).eval()
    with torch.no_grad():
        torch.testing.assert_close(m(_x()), src(_x()), rtol=0, atol=0)
    with pytest.raises(StudyError, match="has no entry 'model'") as e:
        _model({"arch": "checkpoint", "path": str(tmp_path / "ckpt.pt"), "base": "stdcnn_mnist",
                "base_options": TINY, "key": "model"})
    assert e.value.path == "model.key" and "state_dict" in str(e.value)


def test_checkpoint_run_trial_with_zero_epochs_is_the_source_models_accuracy(tmp_path):
    from raystudy.data import load
    from raystudy.spec.schema import DataSpec
    bundle = load(DataSpec(**DATA))
    ev = ["accuracy", {"robustness": {"attack": "pgd", "eps": [0, 0.1], "steps": 3}}]
    models: list[nn.Module] = []
    src = run_trial({"trial_id": "a", "params": {}, "config": _config({"arch": "stdcnn_mnist", **TINY}, 1, ev)},
                    bundle, on_model=models.append)
    torch.save(models[0].state_dict(), tmp_path / "w.pt")
    ext = run_trial({"trial_id": "b", "params": {}, "config": _config(
        {"arch": "checkpoint", "path": str(tmp_path / "w.pt"), "base": "stdcnn_mnist", "base_options": TINY},
        0, ev)}, bundle)
    assert ext["epochs_run"] == 0
    for k in ("accuracy", "robustness.pgd.auc"):
        assert ext[k] == src[k]
    assert json.loads(ext["_curves"]) == json.loads(src["_curves"])


def test_checkpoint_errors_name_the_file_and_key_path(tmp_path):
    torch.save(_trained_stdcnn().state_dict(), tmp_path / "w.pt")
    with pytest.raises(StudyError) as e:
        validate_trial(_config({"arch": "checkpoint", "path": str(tmp_path / "nope.pt"), "base": "stdcnn_mnist"}),
                       file="s.yaml")
    assert "s.yaml: model.path: no file at" in str(e.value)
    with pytest.raises(StudyError) as e:
        validate_trial(_config({"arch": "checkpoint", "path": str(tmp_path / "w.pt"), "base": "stdcnn_mnsit"}),
                       file="s.yaml")
    assert "model.base" in str(e.value) and "did you mean 'stdcnn_mnist'" in str(e.value)
    with pytest.raises(StudyError) as e:
        validate_trial(_config({"arch": "checkpoint", "path": str(tmp_path / "w.pt"), "base": "stdcnn_mnist",
                                "base_options": {"hiden": 16}}), file="s.yaml")
    assert "model.base_options.hiden" in str(e.value) and "s.yaml" in str(e.value)
    # Another width: the names fit, the shapes do not, and the message says which.
    with pytest.raises(StudyError) as e:
        _model({"arch": "checkpoint", "path": str(tmp_path / "w.pt"), "base": "stdcnn_mnist",
                "base_options": {**TINY, "hidden": 32}})
    assert e.value.path == "model.path" and "shape differs" in str(e.value) and str(tmp_path / "w.pt") in str(e.value)
    with pytest.raises(StudyError, match="unexpected: "):
        _model({"arch": "checkpoint", "path": str(tmp_path / "w.pt"), "base": "stdcnn_mnist",
                "base_options": {**TINY, "batchnorm": False}})
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(StudyError, match="cannot read .*junk.pt"):
        _model({"arch": "checkpoint", "path": str(tmp_path / "junk.pt"), "base": "stdcnn_mnist"})


def test_relative_path_is_read_from_the_folder_raystudy_started_in(tmp_path, monkeypatch):
    src = _trained_stdcnn()
    torch.save(src.state_dict(), tmp_path / "w.pt")
    (tmp_path / "trial").mkdir()
    monkeypatch.chdir(tmp_path / "trial")              # where Ray Tune runs a trial
    monkeypatch.setenv("TUNE_ORIG_WORKING_DIR", str(tmp_path))
    m = _model({"arch": "checkpoint", "path": "w.pt", "base": "stdcnn_mnist", "base_options": TINY}).eval()
    with torch.no_grad():
        torch.testing.assert_close(m(_x()), src(_x()), rtol=0, atol=0)


# ------------------------------------------------------------------- torchscript

class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3 * 12 * 12, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


@pytest.mark.parametrize("how", ["script", "trace"])
def test_torchscript_gives_exactly_the_logits_of_the_source_model(tmp_path, how):
    torch.manual_seed(0)
    src = Small().eval()
    src.bn.running_mean.uniform_(-0.2, 0.2)
    ts = torch.jit.script(src) if how == "script" else torch.jit.trace(src, _x())
    torch.jit.save(ts, str(tmp_path / "m.pt"))
    m = _model({"arch": "torchscript", "path": str(tmp_path / "m.pt")}).eval()
    with torch.no_grad():
        torch.testing.assert_close(m(_x()), src(_x()), rtol=0, atol=0)
    # normalize: the scripted model sees (x - mean) / std of the [0, 1] input.
    m = _model({"arch": "torchscript", "path": str(tmp_path / "m.pt"),
                "normalize": {"mean": [0.5], "std": [0.25]}}).eval()
    with torch.no_grad():
        torch.testing.assert_close(m(_x()), src((_x() - 0.5) / 0.25), rtol=0, atol=0)


def test_torchscript_errors_name_the_file_and_key_path(tmp_path):
    torch.jit.save(torch.jit.script(nn.Sequential(nn.Flatten(), nn.Linear(144, 7))), str(tmp_path / "seven.pt"))
    with pytest.raises(StudyError) as e:
        _model({"arch": "torchscript", "path": str(tmp_path / "seven.pt")})
    assert e.value.path == "model.path" and "(2, 7)" in str(e.value) and "(batch, 4)" in str(e.value)
    with pytest.raises(StudyError, match="fails on a 1x10x10 batch .*shapes cannot be multiplied"):
        _model({"arch": "torchscript", "path": str(tmp_path / "seven.pt")}, DataInfo(1, 10, 10, 7, (0.5,), (0.2,)))
    torch.save({"w": torch.zeros(1)}, tmp_path / "state.pt")
    with pytest.raises(StudyError, match="cannot read .* as TorchScript"):
        _model({"arch": "torchscript", "path": str(tmp_path / "state.pt")})
    with pytest.raises(StudyError) as e:
        validate_trial(_config({"arch": "torchscript", "path": str(tmp_path / "seven.pt"),
                                "normalize": {"mean": [0.5, 0.5], "std": [0.2]}}), file="s.yaml")
    assert "s.yaml: model.normalize" in str(e.value)


# -------------------------------------------------------------------- robustbench

class RBBlock(nn.Module):
    """RobustBench's WideResNet block, written from its description: BN-ReLU before each
    conv; when the width changes the 1x1 shortcut reads the activated input."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.bn1, self.relu1 = nn.BatchNorm2d(cin), nn.ReLU()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.relu2 = nn.BatchNorm2d(cout), nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.same = cin == cout
        self.convShortcut = None if self.same else nn.Conv2d(cin, cout, 1, stride, 0, bias=False)

    def forward(self, x):
        a = self.relu1(self.bn1(x))
        out = self.conv2(self.relu2(self.bn2(self.conv1(a))))
        return out + (x if self.same else self.convShortcut(a))


class RBGroup(nn.Module):
    def __init__(self, n, cin, cout, stride):
        super().__init__()
        self.layer = nn.Sequential(*[RBBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1)
                                     for i in range(n)])

    def forward(self, x):
        return self.layer(x)


class RBWideResNet(nn.Module):
    def __init__(self, depth=10, widen=1, sub_block1=False):
        super().__init__()
        n, w = (depth - 4) // 6, [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(3, w[0], 3, 1, 1, bias=False)
        self.block1 = RBGroup(n, w[0], w[1], 1)
        if sub_block1:
            self.sub_block1 = RBGroup(n, w[0], w[1], 1)
        self.block2 = RBGroup(n, w[1], w[2], 2)
        self.block3 = RBGroup(n, w[2], w[3], 2)
        self.bn1, self.relu = nn.BatchNorm2d(w[3]), nn.ReLU()
        self.fc = nn.Linear(w[3], 10)

    def forward(self, x):
        out = self.relu(self.bn1(self.block3(self.block2(self.block1(self.conv1(x))))))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


def _rb_file(tmp_path, sub_block1: bool, depth=10):
    torch.manual_seed(1)
    ref = RBWideResNet(depth=depth, sub_block1=sub_block1)
    for mod in ref.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.1, 0.1)
            mod.running_var.uniform_(0.5, 1.5)
    ref.eval()
    # As RobustBench's checkpoints: under 'state_dict', saved from a DataParallel model.
    torch.save({"state_dict": {"module." + k: v for k, v in ref.state_dict().items()}}, tmp_path / "rb.pt")
    return ref


@pytest.mark.parametrize("name,sub_block1", [("Standard", False), ("Zhang2019Theoretically", True)])
def test_robustbench_layout_loads_into_the_same_function(tmp_path, name, sub_block1):
    ref = _rb_file(tmp_path, sub_block1)
    m = _model({"arch": "robustbench", "name": name, "path": str(tmp_path / "rb.pt"), "key": "state_dict",
                "depth": 10, "widen": 1}, COLOR).eval()
    x = _x(COLOR)
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref(x), rtol=1e-5, atol=1e-6)


def test_robustbench_errors(tmp_path):
    _rb_file(tmp_path, False, depth=16)
    with pytest.raises(StudyError) as e:
        validate_trial(_config({"arch": "robustbench", "name": "Standrd", "path": str(tmp_path / "rb.pt")}),
                       file="s.yaml")
    assert "s.yaml: model.name" in str(e.value) and "did you mean 'Standard'" in str(e.value)
    with pytest.raises(StudyError, match="unexpected: blocks.3") as e:
        _model({"arch": "robustbench", "name": "Standard", "path": str(tmp_path / "rb.pt"), "key": "state_dict",
                "depth": 10, "widen": 1}, COLOR)
    assert e.value.path == "model.path"
    with pytest.raises(StudyError) as e:
        _model({"arch": "robustbench", "name": "Standard", "path": str(tmp_path / "rb.pt")}, GRAY)
    assert e.value.path == "model.dataset"


# ------------------------------------------------------------ through raystudy run

@pytest.mark.slow
def test_external_models_through_raystudy_run_with_zero_epochs(ray_local, tmp_path):
    """A study trains a model; its model.pt as a `checkpoint` and a trace of it as
    `torchscript` are evaluated by two more studies with train.epochs: 0 and give exactly
    the source's accuracy and PGD curve."""
    from raystudy.cli import main
    from raystudy.layout import Layout
    res = tmp_path / "results"
    ev = json.dumps(["accuracy", {"robustness": {"attack": "pgd", "eps": [0, 0.1], "steps": 3}}])
    (tmp_path / "src.yaml").write_text(f"""
name: src
data: {json.dumps(DATA)}
model: {json.dumps({"arch": "stdcnn_mnist", **TINY})}
train: {{epochs: 1, batch_size: 32}}
evaluate: {ev}
""")
    assert main(["run", str(tmp_path / "src.yaml"), "--results", str(res), "--no-dashboard"]) == 0
    s = pd.read_parquet(res / "src" / "trials.parquet").iloc[0]
    weights = Layout(res / "src").final_weights(s["trial_id"])
    assert weights is not None and weights.is_file()
    src = _model({"arch": "stdcnn_mnist", **TINY})
    src.load_state_dict(torch.load(weights, weights_only=True))
    torch.jit.save(torch.jit.trace(src.eval(), _x()), str(tmp_path / "traced.pt"))
    models = {"ckpt": {"arch": "checkpoint", "path": str(weights), "base": "stdcnn_mnist", "base_options": TINY},
              "ts": {"arch": "torchscript", "path": str(tmp_path / "traced.pt")}}
    src_curves = pd.read_parquet(res / "src" / "curves.parquet")
    for name, model in models.items():
        (tmp_path / f"{name}.yaml").write_text(f"""
name: {name}
data: {json.dumps(DATA)}
model: {json.dumps(model)}
train: {{epochs: 0}}
evaluate: {ev}
""")
        assert main(["run", str(tmp_path / f"{name}.yaml"), "--results", str(res), "--no-dashboard"]) == 0
        t = pd.read_parquet(res / name / "trials.parquet").iloc[0]
        assert t["status"] == "completed" and t["epochs_run"] == 0
        assert t["accuracy"] == s["accuracy"]
        c = pd.read_parquet(res / name / "curves.parquet")
        assert list(c["accuracy"]) == list(src_curves["accuracy"])
