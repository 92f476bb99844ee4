"""Worst-of-k spatial augmentation (Engstrom et al., 2019): `train.augment.worst_of_k`."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from raystudy import augment as aug
from raystudy.methods.base import TrainState
from raystudy.registry import METHODS
from raystudy.spec.schema import AugmentSpec

from test_contracts import SYN, tiny_cnn


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def batch():
    g = gen(5)
    return torch.rand(24, 1, 12, 12, generator=g), torch.randint(0, 4, (24,), generator=g)


def test_k1_is_plain_random_augmentation(batch):
    x, y = batch
    spec = AugmentSpec(rotation=30, translation=2, worst_of_k=1)
    got = aug.augment(x, spec, gen(), model=tiny_cnn(), y=y)
    assert torch.equal(got, aug.random_transform(x, 30, 2, generator=gen()))
    # The default is 1, and then no model is needed.
    assert torch.equal(aug.augment(x, AugmentSpec(rotation=30, translation=2), gen()), got)


def test_k_draws_keep_the_highest_loss_per_example(batch):
    x, y = batch
    model = tiny_cnn().train()
    spec = AugmentSpec(rotation=90, translation=2, worst_of_k=4)
    got = aug.augment(x, spec, gen(), model=model, y=y)
    assert model.training and all(p.grad is None for p in model.parameters())
    # The same four draws, in order, from the same generator: the first is plain augmentation's.
    g = gen()
    cands = torch.stack([aug.random_transform(x, 90, 2, generator=g) for _ in range(4)])
    with torch.no_grad():
        model.eval()
        loss = torch.stack([F.cross_entropy(model(c), y, reduction="none") for c in cands])
        model.train()
    pick = loss.argmax(0)
    assert torch.equal(got, cands[pick, torch.arange(len(x))])
    # Not always the first draw: the choice is by loss, and it is the maximum of the k.
    assert (pick != 0).any()
    with torch.no_grad():
        model.eval()
        chosen = F.cross_entropy(model(got), y, reduction="none")
    assert torch.allclose(chosen, loss.max(0).values)


def test_needs_the_model_and_labels(batch):
    with pytest.raises(ValueError, match="needs the model"):
        aug.augment(batch[0], AugmentSpec(rotation=30, worst_of_k=3), gen())


def test_trial_ids_keep_the_default_out_of_the_dump():
    assert "worst_of_k" not in AugmentSpec(rotation=30).model_dump()
    assert AugmentSpec(rotation=30, worst_of_k=10).model_dump()["worst_of_k"] == 10


def test_cusp_keeps_worst_of_k_when_it_widens_the_rotation():
    entry = METHODS.get("cusp")
    cusp = entry.obj(entry.schema.model_validate({"rotations": [30, 60], "eps": [0.05, 0.1]}), SYN)
    state = TrainState(epoch=0, stage_epoch=0, lr=0.1, lr_stepped=False, milestone_index=1,
                       augment=AugmentSpec(worst_of_k=5), device=torch.device("cpu"), generator=gen())
    cusp.on_epoch_start(tiny_cnn(), state)
    assert state.augment.rotation == 60 and state.augment.worst_of_k == 5


def test_a_trial_trains_with_worst_of_k_in_a_cusp_stage():
    """Through the training loop (no Ray): a natural stage with worst-of-3 rotations, then a
    CuSP stage whose own augment asks for worst-of-3; both train to a finite loss, and the
    worst-of-k run differs from plain augmentation with the same seed."""
    from raystudy.data import load
    from raystudy.execute import NullReporter, run_trial
    from raystudy.spec.schema import DataSpec
    data = {"dataset": "synthetic", "train_size": 64, "test_size": 16, "val_fraction": 0.0}

    def trial(k: int) -> dict:
        stages = [{"epochs": 1, "augment": {"rotation": 90, "worst_of_k": k}},
                  {"epochs": 1, "method": {"name": "cusp", "rotations": [30], "eps": [0.05], "steps": 1,
                                           "step_size": 0.05},
                   "augment": {"worst_of_k": k}}]
        cfg = {"seed": 0, "device": "cpu", "data": data,
               "model": {"arch": "stdcnn_mnist", "channels": [4, 4, 8, 8], "hidden": 16},
               "train": {"epochs": 2, "batch_size": 32, "optimizer": {"name": "adam", "lr": 0.003},
                         "stages": stages},
               "evaluate": ["accuracy"]}
        return run_trial({"trial_id": f"k{k}", "params": {}, "config": cfg}, load(DataSpec(**data)), NullReporter())

    worst, plain = trial(3), trial(1)
    assert worst["epochs_run"] == 2 and torch.isfinite(torch.tensor(worst["final_loss"]))
    assert worst["final_loss"] != plain["final_loss"]
