"""The speed options (bf16 autocast, channels_last, torch.compile) train the same model."""

import pytest
import torch

from raystudy.data import load
from raystudy.models import build_model
from raystudy.spec.schema import DataSpec
from raystudy.spec.validate import validate_trial
from raystudy.train import fit

CONFIG = {
    "seed": 0,
    "data": {"dataset": "synthetic", "train_size": 256, "test_size": 64},
    "model": {"arch": "stdcnn_mnist", "channels": [4, 4, 8, 8], "hidden": 16},
    "train": {"epochs": 2, "batch_size": 64, "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9}},
    "evaluate": [],
}


def run(**flags):
    cfg = {**CONFIG, "train": {**CONFIG["train"], **flags}}
    parsed = validate_trial(cfg)
    data = load(DataSpec.model_validate(cfg["data"])).to("cpu")
    torch.manual_seed(0)
    model = build_model(parsed.model, data.info)
    fs = fit(parsed, model, data, torch.device("cpu"))
    return [h["loss"] for h in fs.history], model


def test_channels_last_matches_default():
    base, _ = run()
    cl, model = run(channels_last=True)
    assert cl == pytest.approx(base, rel=1e-4)
    assert model.features[0].weight.is_contiguous(memory_format=torch.channels_last)


def test_bf16_autocast_trains_close_to_fp32():
    base, _ = run()
    amp, _ = run(amp=True)
    # bf16 keeps ~3 significant digits: same trajectory, not the same bits.
    assert all(torch.isfinite(torch.tensor(amp)))
    assert amp == pytest.approx(base, rel=0.05)
    assert amp[-1] < amp[0]


@pytest.mark.slow
def test_torch_compile_matches_eager():
    base, _ = run()
    comp, _ = run(compile=True)
    assert comp == pytest.approx(base, rel=1e-3)
