"""The metrics' fast path (issue 20 item 3): `train.eval_amp` runs the attacks and forward
passes of the metrics that allow it under bf16 autocast, `train.eval_compile` with a compiled
model. fp32 and the fast path must agree on robust accuracy within sampling noise, and a
check that must see fp32 gradients (the zero-gradient fraction) must still see them."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from raystudy.metrics import EvalContext
from raystudy.metrics.base import Metric, MetricOptions, MetricResult
from raystudy.registry import METRICS, MODELS
from raystudy.spec.load import load_document
from raystudy.spec.validate import validate_trial

CPU = torch.device("cpu")


N = 150   # bf16 on a CPU without bf16 instructions runs ~10x slower than fp32: keep it small


def robust(model, data, **ctx_kw):
    entry = METRICS.get("robustness")
    o = entry.schema.model_validate({"attack": "pgd", "eps": [0, 0.1, 0.2], "steps": 3, "n": N})
    res = entry.obj(EvalContext(model, data, CPU, **ctx_kw), o)
    return {r["x"]: r["accuracy"] for r in res.curves}, N


@pytest.fixture(scope="module")
def trained(mnist_small):
    """A small StdCNN trained for three epochs (Adam) on 1,000 digits."""
    torch.manual_seed(0)
    entry = MODELS.get("stdcnn_mnist")
    model = entry.obj(entry.schema(channels=[8, 8, 16, 16], hidden=32), mnist_small.info)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    x, y = mnist_small.x_train, mnist_small.y_train
    for _ in range(3):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 32):
            idx = perm[i:i + 32]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def test_bf16_robust_accuracy_agrees_with_fp32_within_sampling_noise(trained, mnist_small):
    fp32, n = robust(trained, mnist_small)
    bf16, _ = robust(trained, mnist_small, amp=True)
    assert fp32[0.0] > 0.7 and fp32[0.2] < fp32[0.0] - 0.1     # a trained model an attack hurts
    for eps, p in fp32.items():
        # Two estimates on the same images: 3 binomial standard errors of a difference.
        se = math.sqrt(2 * max(p * (1 - p), 1 / n) / n)
        assert abs(bf16[eps] - p) <= 3 * se, (eps, p, bf16[eps])


@pytest.mark.slow
def test_compiled_robust_accuracy_agrees_with_eager(trained, mnist_small):
    eager, n = robust(trained, mnist_small)
    comp, _ = robust(trained, mnist_small, compile=True)
    for eps, p in eager.items():
        assert abs(comp[eps] - p) <= 3 * math.sqrt(2 * max(p * (1 - p), 1 / n) / n)


class Probe(Metric):
    """Records the dtype and type of what `compute` sees."""

    fast_path = True

    def compute(self, run, o):
        self.seen = (run.model(run.x[:2]).dtype, type(run.model).__name__)
        return MetricResult()


class SlowProbe(Probe):
    fast_path = False


def test_only_fast_path_metrics_run_in_bf16(mnist_small, trained):
    o = MetricOptions(n=4)
    for metric, amp, want in ((Probe(), True, torch.bfloat16), (Probe(), False, torch.float32),
                              (SlowProbe(), True, torch.float32)):
        metric(EvalContext(trained, mnist_small, CPU, amp=amp), o)
        assert metric.seen[0] == want
    # Outside the metric nothing changed.
    assert not torch.is_autocast_enabled("cpu")
    assert trained(mnist_small.x_test[:2]).dtype == torch.float32


def test_context_takes_the_fast_path_from_the_trial():
    cfg = {"model": {"arch": "stdcnn_mnist"}, "data": {"dataset": "synthetic"},
           "train": {"eval_amp": True, "eval_compile": True}}
    ctx = EvalContext(nn.Identity(), None, CPU, trial=validate_trial(cfg))
    assert ctx.amp and ctx.compile
    assert not EvalContext(nn.Identity(), None, CPU, trial=validate_trial({**cfg, "train": {}})).amp


def test_the_options_leave_existing_trial_ids_alone():
    doc = {"name": "t", "model": {"arch": "stdcnn_mnist"}, "data": {"dataset": "synthetic"}}
    plain = load_document(doc).trials[0]
    off = load_document({**doc, "train": {"eval_amp": False}}).trials[0]
    on = load_document({**doc, "train": {"eval_amp": True}}).trials[0]
    assert plain.trial_id == off.trial_id != on.trial_id


def confident_model() -> nn.Module:
    """A linear model so sure of class 0 (logit margin ~100) that the cross-entropy gradient
    w.r.t. the input is ~1e-42: tiny but not zero in fp32, and exactly zero once the backward
    matmul runs in bf16 (its smallest subnormal is ~1e-40)."""
    m = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    with torch.no_grad():
        m[1].weight.zero_()
        m[1].weight[1] = 1.0
        m[1].bias.copy_(torch.tensor([105.0, 0.0, 0.0]))
    return m


def zero_grad_fraction(model, x, y, fp32: bool) -> float:
    # As the health check does it: forward AND backward inside autocast(enabled=False) (on
    # the CPU the backward runs on the calling thread, under whatever autocast state it has).
    x0 = x.clone().requires_grad_(True)
    with torch.autocast("cpu", enabled=not fp32):
        g, = torch.autograd.grad(F.cross_entropy(model(x0), y, reduction="sum"), x0)
    return (g.reshape(len(g), -1).abs().amax(1) == 0).float().mean().item()


def test_reduced_precision_cannot_pass_for_gradient_masking():
    model = confident_model()
    x, y = torch.rand(8, 1, 4, 4, generator=torch.Generator().manual_seed(0)), torch.zeros(8, dtype=torch.long)

    class ZeroGrad(Metric):
        fast_path = True

        def compute(self, run, o):
            self.naive = zero_grad_fraction(run.model, x, y, fp32=False)
            self.checked = zero_grad_fraction(run.model, x, y, fp32=True)
            return MetricResult()

    m = ZeroGrad()
    data = type("D", (), {"split": lambda self, s: (x, y)})()
    m(EvalContext(model, data, CPU, amp=True), MetricOptions(n=None))
    assert m.naive == 1.0       # bf16: every gradient underflows, it looks like masking
    assert m.checked == 0.0     # fp32 inside the fast path: no input has a zero gradient
    assert zero_grad_fraction(model, x, y, fp32=True) == 0.0
