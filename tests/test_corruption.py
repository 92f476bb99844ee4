"""Common corruptions (issue 21 item 4): each corruption keeps shape and range, is the identity
at severity 0, is reproducible from its seed, moves images further with severity, and the
`corruption` metric's accuracy falls with severity on a trained model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raystudy.corruptions import SETS, TABLE, apply
from raystudy.errors import StudyError
from raystudy.metrics.base import predict
from raystudy.spec.validate import validate_trial

from helpers import run_metric, train_stdcnn

RANDOM = {"gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "motion_blur", "rotate", "shear",
          "translate"}


def _g(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def digits(mnist_small):
    return mnist_small.x_test[:128]


@pytest.mark.parametrize("name", sorted(TABLE))
def test_each_corruption_keeps_shape_and_range_and_is_seeded(name, digits):
    rgb = torch.rand(6, 3, 16, 20, generator=_g(3))
    for x in (digits, rgb):
        assert torch.equal(apply(name, x, 0, _g()), x)
        for s in (1, 3, 5):
            y = apply(name, x, s, _g(7))
            assert y.shape == x.shape and y.dtype == x.dtype
            assert y.min() >= 0 and y.max() <= 1 and torch.isfinite(y).all()
            assert not torch.equal(y, x)
            torch.testing.assert_close(apply(name, x, s, _g(7)), y, rtol=0, atol=0)
        if name in RANDOM:
            assert not torch.equal(apply(name, x, 3, _g(8)), apply(name, x, 3, _g(7)))


@pytest.mark.parametrize("name", sorted(set(TABLE) - {"pixelate"}))
def test_corrupted_digits_move_further_from_the_clean_ones_with_severity(name, digits):
    """Mean absolute change per pixel, non-decreasing in severity (pixelate is left out: area
    resampling to 27, 25, 24, 21, 18 pixels of 28 does not grow monotonically)."""
    d = [(apply(name, digits, s, _g()) - digits).abs().mean().item() for s in range(6)]
    assert all(b >= a - 1e-6 for a, b in zip(d, d[1:])), d
    assert d[5] > 2 * d[1] or name in ("motion_blur", "scale", "translate", "rotate"), d


def test_definitions_that_have_closed_forms():
    x = torch.rand(4, 3, 12, 12, generator=_g(1)) * 0.8 + 0.1
    # contrast: a convex mix of each pixel and its channel mean, so the mean is kept.
    y = apply("contrast", x, 2, _g())
    torch.testing.assert_close(y.mean((2, 3)), x.mean((2, 3)))
    torch.testing.assert_close(y - y.mean((2, 3), keepdim=True), 0.5 * (x - x.mean((2, 3), keepdim=True)))
    # brightness: V + c in HSV, hue and saturation kept: channel ratios are unchanged where V + c <= 1.
    y = apply("brightness", x * 0.5, 5, _g())
    torch.testing.assert_close(y.amax(1), (x * 0.5).amax(1) + 0.3)
    torch.testing.assert_close(y / y.amax(1, keepdim=True), x / x.amax(1, keepdim=True))
    g = torch.rand(2, 1, 8, 8, generator=_g(2))
    torch.testing.assert_close(apply("brightness", g, 1, _g()), (g + 0.05).clamp(max=1))
    # translate: a shift by round(c·size) pixels with black fill, exactly.
    img = torch.zeros(1, 1, 25, 25)
    img[0, 0, 10, 12] = 1.0
    y = apply("translate", img, 5, _g())
    assert y.sum().item() == pytest.approx(1.0) and y.max().item() == pytest.approx(1.0)
    r, c = divmod(int(y.argmax()), 25)
    assert (abs(r - 10), abs(c - 12)) == (5, 5)
    # rotate about the centre: a round blob stays (up to bilinear resampling) itself.
    t = torch.arange(21.0) - 10
    blob = torch.exp(-(t[:, None] ** 2 + t[None, :] ** 2) / 18)[None, None]
    assert (apply("rotate", blob, 5, _g()) - blob).abs().max() < 0.03
    # ... while a blob 6 pixels right of the centre turns by 50°: its peak lands 6·sin 50° ≈ 4.6
    # rows up or down and 6·cos 50° ≈ 3.9 columns right of the centre.
    off = torch.roll(blob, 6, dims=3)
    r, c = divmod(int(apply("rotate", off, 5, _g()).argmax()), 21)
    assert (abs(r - 10), c - 10) in ((5, 4), (4, 4), (5, 3), (4, 3))
    # scale shrinks about the centre: half the size keeps a quarter of the mass.
    assert apply("scale", blob, 5, _g()).sum().item() == pytest.approx(blob.sum().item() / 4, rel=0.05)


@pytest.fixture(scope="module")
def trained(mnist_small):
    return train_stdcnn(mnist_small, epochs=2)


NAMES = ["impulse_noise", "motion_blur", "brightness", "contrast", "rotate", "shear", "scale", "translate"]


@pytest.mark.slow
def test_corruption_metric_accuracy_falls_with_severity(trained, mnist_small):
    res = run_metric("corruption", trained, mnist_small, corruptions=NAMES, n=200)
    clean = (predict(trained, mnist_small.x_test) == mnist_small.y_test)
    rows = {(r["metric"], r["x"]): r for r in res.curves}
    mean = [rows[("corruption.mean", s)]["accuracy"] for s in range(6)]
    # The mean over corruptions falls at every step; each corruption loses accuracy by severity 5.
    assert all(b <= a + 1e-9 for a, b in zip(mean, mean[1:])), mean
    drops = [rows[(f"corruption.{n}", 0)]["accuracy"] - rows[(f"corruption.{n}", 5)]["accuracy"] for n in NAMES]
    assert sum(d > 0 for d in drops) >= len(NAMES) - 1, dict(zip(NAMES, drops))
    # Severity 0 is the clean subset for every corruption: its accuracy and full consistency.
    acc0 = {rows[(f"corruption.{n}", 0)]["accuracy"] for n in NAMES}
    assert len(acc0) == 1 and {rows[(f"corruption.{n}", 0)]["consistency"] for n in NAMES} == {1.0}
    assert abs(acc0.pop() - clean.float().mean().item()) < 0.1
    # The mean curve is the mean of the per-corruption curves, and its outcomes are the pairs.
    for s in range(6):
        per = np.mean([rows[(f"corruption.{n}", s)]["accuracy"] for n in NAMES])
        assert rows[("corruption.mean", s)]["accuracy"] == pytest.approx(per, abs=1e-6)
        assert rows[("corruption.mean", s)]["n"] == 200 * len(NAMES)
    errs = [1 - mean[s] for s in range(1, 6)]
    assert res.scalars["corruption.mean.error"] == pytest.approx(np.mean(errs))
    assert res.scalars["corruption.mean.error_gap"] == pytest.approx(np.mean(errs) - (1 - mean[0]))
    # Seeded: a second call sees the same corrupted images and gives the same numbers.
    again = run_metric("corruption", trained, mnist_small, corruptions=NAMES, n=200)
    assert again.curves == res.curves and again.scalars == res.scalars


def test_corruption_options_errors_name_the_key_path():
    def cfg(opts):
        return {"seed": 0, "device": "cpu", "data": {"dataset": "synthetic"}, "model": {"arch": "mlp"},
                "train": {"epochs": 0}, "evaluate": [{"corruption": opts}]}
    with pytest.raises(StudyError) as e:
        validate_trial(cfg({"corruptions": ["gausian_noise"]}), file="s.yaml")
    assert "s.yaml: evaluate.0.corruption.corruptions" in str(e.value)
    assert "did you mean 'gaussian_noise'" in str(e.value)
    with pytest.raises(StudyError, match="evaluate.0.corruption.corruptions.*did you mean 'mnist_c'"):
        validate_trial(cfg({"corruptions": "mnistc"}), file="s.yaml")
    with pytest.raises(StudyError, match="evaluate.0.corruption.severities.*0 \\(clean\\) to 5"):
        validate_trial(cfg({"severities": [0, 6]}), file="s.yaml")
    assert set(SETS["mnist_c"]) <= set(TABLE) and set(SETS["cifar10_c"]) <= set(TABLE)


@pytest.mark.slow
def test_corruption_through_raystudy_run_and_report(ray_local, tmp_path):
    """A study file with the metric and its chart: curves and per-example outcomes land in the
    tables, two seeds of the same subset share their `examples` key, and the report draws it."""
    import pandas as pd
    from raystudy.cli import main
    (tmp_path / "c.yaml").write_text("""
name: corr
data: {dataset: synthetic, train_size: 64, test_size: 48}
model: {arch: stdcnn_mnist, channels: [4, 4, 8, 8], hidden: 16}
train: {epochs: 1, batch_size: 32}
space: {seed: {grid: [0, 1]}}
evaluate:
  - corruption: {corruptions: [brightness, rotate], severities: [0, 3, 5]}
report:
  - {chart: corruption, color: seed}
""")
    res = tmp_path / "results"
    assert main(["run", str(tmp_path / "c.yaml"), "--results", str(res), "--no-dashboard"]) == 0
    trials = pd.read_parquet(res / "corr" / "trials.parquet")
    assert (trials["status"] == "completed").all() and trials["corruption.mean.error"].notna().all()
    cur = pd.read_parquet(res / "corr" / "curves.parquet")
    assert set(cur["metric"]) == {"corruption.brightness", "corruption.rotate", "corruption.mean"}
    assert sorted(set(cur["x"])) == [0, 3, 5] and (cur["x_title"] == "severity").all()
    out = pd.read_parquet(res / "corr" / "outcomes.parquet")
    mean = out[out["metric"] == "corruption.mean"]
    assert (mean["n"] == 2 * 48).all() and mean["examples"].nunique() == 1
    assert main(["report", str(res / "corr"), "--no-png"]) == 0
    assert 'data-chart="corruption"' in (res / "corr" / "report.html").read_text()
