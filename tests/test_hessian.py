"""The hessian metric against the exact Hessian of a tiny model.

A 4-5-3 tanh MLP (43 weights) on 12 points: torch.autograd.functional.hessian gives
the exact Hessian of the mean cross-entropy, so pyhessian's power iteration and
Hutchinson trace, and our stochastic Lanczos quadrature, are checked against numbers
that do not come from the code under test.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.func import functional_call

from raystudy.data import DataInfo, DeviceData
from raystudy.errors import StudyError
from raystudy.metrics.base import EvalContext
from raystudy.metrics.hessian import HessianOptions, hessian, slq, smooth_density

N = 12


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Double backward through convolutions slows down 15-25x with 2 threads on 2 busy cores.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class WithUnused(nn.Module):
    """The same MLP plus a layer outside the loss (pyhessian alone crashes on it)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.unused = nn.Linear(2, 2)

    def forward(self, x):
        return self.net(x)


def tiny_mlp(extra: bool = False) -> nn.Module:
    torch.manual_seed(28)
    m = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    return WithUnused(m) if extra else m


def points():
    g = torch.Generator().manual_seed(2)
    x = 2.0 * torch.randn(N, 4, generator=g)
    y = torch.randint(0, 3, (N,), generator=g)
    return x, y


def ctx_for(model) -> EvalContext:
    x, y = points()
    info = DataInfo(1, 1, 4, 3, (0.0,), (1.0,))
    data = DeviceData("tiny", x, y, x[:0], y[:0], x, y, info)
    return EvalContext(model=model, data=data, device=torch.device("cpu"))


def exact_hessian(model) -> torch.Tensor:
    """Hessian of the mean CE over all points w.r.t. the used weights (float64)."""
    x, y = points()
    named = [(n, p) for n, p in model.named_parameters() if not n.startswith("unused")]
    shapes = [p.shape for _, p in named]
    flat0 = torch.cat([p.detach().double().reshape(-1) for _, p in named])
    m64 = tiny_mlp().double()

    def loss(flat):
        parts, i = {}, 0
        for (n, _), s in zip(named, shapes):
            k = math.prod(s)
            parts[n] = flat[i:i + k].view(s)
            i += k
        return nn.functional.cross_entropy(functional_call(m64, parts, (x.double(),)), y)

    return torch.autograd.functional.hessian(loss, flat0)


@pytest.fixture(scope="module")
def exact():
    H = exact_hessian(tiny_mlp())
    return H, torch.linalg.eigvalsh(H)


def run(model, **kw) -> dict:
    opts = HessianOptions(samples=N, **kw)
    return hessian(ctx_for(model), opts)


def test_top_eigenvalues_match_exact_hessian(exact):
    _, lam = exact
    dominant = sorted(lam.tolist(), key=abs, reverse=True)[:3]
    # A real eigengap, or power iteration could not resolve them to 1e-3.
    assert abs(dominant[1]) < 0.9 * abs(dominant[0]) and abs(dominant[2]) < 0.9 * abs(dominant[1])
    r = run(tiny_mlp(), top_n=3, max_iter=2000, tol=1e-8, trace=False).scalars
    for k, want in enumerate(dominant, 1):
        assert r[f"hessian.top{k}"] == pytest.approx(want, rel=1e-3)
        assert r[f"hessian.top{k}_residual"] < 1e-2


def test_batched_hvps_average_to_the_full_hessian(exact):
    # 12 points in batches of 5, 5, 2: the HVPs must be weighted by batch size.
    _, lam = exact
    top = max(lam.tolist(), key=abs)
    r = run(tiny_mlp(), top_n=1, max_iter=2000, tol=1e-8, trace=False, batch_size=5).scalars
    assert r["hessian.top1"] == pytest.approx(top, rel=1e-3)


def test_unconverged_power_iteration_shows_in_the_residual(exact):
    r = run(tiny_mlp(), top_n=1, max_iter=2, tol=1e-12, trace=False).scalars
    assert r["hessian.top1_residual"] > 1e-2


def test_trace_within_three_standard_errors(exact):
    H, _ = exact
    n = 300
    r = run(tiny_mlp(), top_n=None, trace=True, trace_samples=n).scalars
    assert r["hessian.trace_n"] == n
    assert abs(r["hessian.trace"] - H.trace().item()) < 3 * r["hessian.trace_se"]
    # Rademacher Hutchinson: Var(vᵀHv) = 2 Σ_{i≠j} H_ij², so the SE is known in closed form.
    se = math.sqrt(2 * ((H ** 2).sum() - (H.diagonal() ** 2).sum()).item() / n)
    assert r["hessian.trace_se"] == pytest.approx(se, rel=0.25)


def test_slq_nodes_are_exact_eigenvalues_with_weights_summing_to_one(exact):
    H, lam = exact
    d = len(lam)
    Hf = H.float()
    g = torch.Generator().manual_seed(1)
    nodes, weights = slq(lambda v: Hf @ v, d, d + 5, 3, g, torch.device("cpu"))
    assert weights.sum(1).tolist() == pytest.approx([1.0] * 3, abs=1e-5)
    span = (lam.max() - lam.min()).item()
    heavy = weights > 1e-4
    dist = (nodes[heavy][:, None] - lam[None, :]).abs().min(1).values
    assert dist.max().item() < 1e-3 * span


def test_density_integrates_to_one_and_sits_on_the_eigenvalues(exact):
    _, lam = exact
    res = run(tiny_mlp(), top_n=None, trace=False, density=True, slq_runs=30, slq_iterations=50,
              density_grid=2000, density_bandwidth=0.005)
    rows = [c for c in res.curves if c["metric"] == "hessian.density"]
    assert len(rows) == 2000
    t = torch.tensor([c["x"] for c in rows], dtype=torch.float64)
    p = torch.tensor([c["density"] for c in rows], dtype=torch.float64)
    assert (p >= 0).all()
    assert torch.trapezoid(p, t).item() == pytest.approx(1.0, abs=1e-3)
    sigma = 0.005 * (lam.max() - lam.min()).item()
    # Mass far (> 6 σ) from every exact eigenvalue: none.
    far = (t[:, None] - lam[None, :]).abs().min(1).values > 6 * sigma
    assert torch.trapezoid(p * far, t).item() < 0.02
    # Unbiased weights (E[vvᵀ] = I/d): the CDF follows the exact eigenvalue CDF.
    cdf = torch.cumulative_trapezoid(p, t)
    for q in torch.linspace(lam.min().item(), lam.max().item(), 9)[1:-1]:
        want = (lam <= q).double().mean().item()
        got = cdf[(t[1:] <= q).sum() - 1].item()
        assert abs(got - want) < 0.1, (q.item(), got, want)


def test_smooth_density_is_normalized_for_a_point_mass():
    t, p = smooth_density(torch.tensor([[2.0, 2.0]]), torch.tensor([[0.5, 0.5]]), 101, 0.1)
    assert torch.trapezoid(p, t).item() == pytest.approx(1.0, abs=1e-3)
    assert t[p.argmax()].item() == pytest.approx(2.0, abs=1e-3)


def test_unused_parameters_are_skipped_and_restored(exact):
    _, lam = exact
    m = tiny_mlp(extra=True)
    r = run(m, top_n=1, max_iter=2000, tol=1e-8, trace=False).scalars
    assert r["hessian.top1"] == pytest.approx(max(lam.tolist(), key=abs), rel=1e-3)
    assert all(p.requires_grad for p in m.parameters())


@pytest.mark.parametrize("training", [True, False])
def test_mode_grads_and_rng_are_restored(training):
    m = tiny_mlp()
    m.train(training)
    for p in m.parameters():
        p.grad = torch.full_like(p, 0.5)
    rng = torch.get_rng_state()
    run(m, top_n=1, max_iter=5, trace=True, trace_samples=4, density=True, slq_iterations=4)
    assert m.training is training
    assert all(p.grad is not None and p.grad.grad_fn is None and (p.grad == 0.5).all() for p in m.parameters())
    assert torch.equal(torch.get_rng_state(), rng)


def test_seeded_and_seed_matters():
    a = run(tiny_mlp(), top_n=1, max_iter=3, trace=True, trace_samples=5).scalars
    b = run(tiny_mlp(), top_n=1, max_iter=3, trace=True, trace_samples=5).scalars
    c = run(tiny_mlp(), top_n=1, max_iter=3, trace=True, trace_samples=5, seed=1).scalars
    assert a == b
    assert a["hessian.trace"] != c["hessian.trace"]


def test_bad_options_are_study_errors():
    from raystudy.spec.validate import validate_trial
    base = {"model": {"arch": "stdcnn_mnist"}}
    with pytest.raises(StudyError, match="nothing to compute"):
        validate_trial({**base, "evaluate": [{"hessian": {"top_n": None, "trace": False}}]})
    # 0 eigenvalues is no spectrum (issue 19): an error at its key, saying how to skip them.
    with pytest.raises(StudyError, match=r"evaluate\.0\.hessian\.top_n.*top_n: null") as e:
        validate_trial({**base, "evaluate": [{"hessian": {"top_n": 0}}]})
    assert "1-based" not in str(e.value)
    with pytest.raises(StudyError, match=r"evaluate\.0\.hessian\.n\b.*samples"):
        validate_trial({**base, "evaluate": [{"hessian": {"n": 64}}]})
    with pytest.raises(StudyError, match="1-based"):
        validate_trial({**base, "evaluate": [{"hessian": {"at_epochs": [0, 2]}}]})
    with pytest.raises(StudyError, match="top_n"):
        validate_trial({**base, "evaluate": [{"hessian": {"topn": 3}}]})


def test_stdcnn_on_mnist_cpu(mnist_small):
    from raystudy.models.stdcnn import StdCNN, StdCNNOptions
    torch.manual_seed(0)
    m = StdCNN(StdCNNOptions(channels=[4, 4, 8, 8], hidden=16), mnist_small.info).train()
    ctx = EvalContext(model=m, data=mnist_small, device=torch.device("cpu"))
    # 32 samples in two batches: pyhessian's dataloader path, on a CPU-only machine.
    r = hessian(ctx, HessianOptions(samples=32, batch_size=16, top_n=2, max_iter=10,
                                    trace_samples=3)).scalars
    assert m.training
    assert r["hessian.top1"] >= abs(r["hessian.top2"]) > 0
    assert math.isfinite(r["hessian.trace"]) and r["hessian.trace_se"] > 0


def _trial(at_epochs):
    hess = {"samples": 16, "batch_size": 16, "top_n": 1, "max_iter": 5, "trace": False}
    if at_epochs:
        hess["at_epochs"] = at_epochs
    cfg = {"seed": 0, "device": "cpu", "data": {"dataset": "mnist", "train_size": 128, "test_size": 32},
           "model": {"arch": "stdcnn_mnist", "channels": [4, 4, 8, 8], "hidden": 16, "dropout": 0.5},
           "train": {"epochs": 2, "batch_size": 64, "optimizer": {"name": "sgd", "lr": 0.05}},
           "evaluate": [{"hessian": hess}]}
    return {"trial_id": "t", "params": {}, "config": cfg}


def test_at_epochs_adds_curve_rows_without_perturbing_training():
    import json

    from raystudy.data import load
    from raystudy.execute import NullReporter, run_trial
    from raystudy.spec.schema import DataSpec
    bundle = load(DataSpec(dataset="mnist", train_size=128, test_size=32))
    runs = {}
    for at in (None, [1, 2]):
        models, rep = [], NullReporter()
        final = run_trial(_trial(at), bundle, rep, on_model=models.append)
        runs[bool(at)] = (final, rep, models[0])
    (f0, _, m0), (f1, rep1, m1) = runs[False], runs[True]
    # Dropout draws from the global RNG: equal weights mean the metric left it alone.
    for a, b in zip(m0.state_dict().values(), m1.state_dict().values()):
        assert torch.equal(a, b)
    assert f0["hessian.top1"] == f1["hessian.top1"]
    rows = [r for r in json.loads(f1["_curves"]) if r["metric"] == "hessian.top1@epoch"]
    assert [(r["x"], r["epoch"]) for r in rows] == [(1, 1), (2, 2)]
    # After the last epoch the weights are the final ones: the same number as the final metric.
    assert rows[1]["value"] == pytest.approx(f1["hessian.top1"], rel=1e-6)
    assert [e.get("hessian.top1") for e in rep1.epochs] == [r["value"] for r in rows]
    assert not json.loads(f0["_curves"])


def test_gcnn_hvps_are_symmetric_and_batching_agrees(mnist_small):
    # escnn's eval-mode filter cache made a second parameter backward raise (PITFALLS);
    # the zoo's GCNN expands its filter per forward, so every batched HVP must work.
    from raystudy.registry import MODELS
    from raystudy.metrics.hessian import _hessian_session, hvp
    e = MODELS.get("gcnn_mnist")  # always registered: a missing GCNN is a failure, not a skip
    torch.manual_seed(0)
    m = e.obj(e.schema(channels=[4, 4, 8, 8], hidden=16), mnist_small.info).train()
    ctx = EvalContext(model=m, data=mnist_small, device=torch.device("cpu"))
    kw = dict(samples=16, top_n=1, max_iter=20, trace=False)
    a = hessian(ctx, HessianOptions(batch_size=8, **kw)).scalars["hessian.top1"]
    b = hessian(ctx, HessianOptions(batch_size=16, **kw)).scalars["hessian.top1"]
    assert m.training and a == pytest.approx(b, rel=1e-4)
    x, y = mnist_small.x_train[:16], mnist_small.y_train[:16]
    with _hessian_session(m, x, y, 8, torch.device("cpu"), 0) as h:
        g = torch.Generator().manual_seed(0)
        u = [torch.randn(p.shape, generator=g) for p in h.params]
        v = [torch.randn(p.shape, generator=g) for p in h.params]
        uhv = sum((s * t).sum() for s, t in zip(hvp(h, v), u))
        vhu = sum((s * t).sum() for s, t in zip(hvp(h, u), v))
    assert uhv.item() == pytest.approx(vhu.item(), rel=1e-3)
