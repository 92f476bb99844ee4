"""Cross-study reports (issue 21 item 6): `raystudy report A B` overlays what two recorded
studies share, the study as the colour, and lists what they do not share."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis.compare import build_cross_report, combine, overlay_charts
from analysis.demo import write_demo_results
from analysis.load import load
from raystudy.cli import main
from raystudy.errors import StudyError


@pytest.fixture
def two_studies(tmp_path):
    """`advinv` (natural / PGD-AT × rotation 0 / 180) and `cusp` (natural × rotation 0 / 90 /
    180) without invariance curves or Hessian scalar, its spectrum on another x scale."""
    a = write_demo_results(tmp_path / "advinv", name="advinv", failed=0, pending=0, seeds=(0, 1))
    b = write_demo_results(tmp_path / "cusp", name="cusp", failed=1, pending=0, seed=1, seeds=(0, 1),
                           methods=("natural",), rotations=(0, 90, 180))
    cur = pd.read_parquet(b / "curves.parquet")
    cur = cur[cur["metric"] != "invariance.rotation"]
    cur.loc[cur["metric"] == "hessian.density", "x_title"] = "log eigenvalue"
    cur.to_parquet(b / "curves.parquet")
    pd.read_parquet(b / "trials.parquet").drop(columns=["hessian.top1"]).to_parquet(b / "trials.parquet")
    return a, b


def test_combine_keeps_what_every_study_shares(two_studies):
    a, b = two_studies
    ov = combine([a, b])
    assert ov.studies == ["advinv", "cusp"]
    assert ov.curve_metrics == ["robustness.pgd", "spatial_attack.surface@0", "spatial_attack.surface@0.1",
                                "corruption.brightness", "corruption.rotate", "corruption.mean"]
    assert "accuracy" in ov.scalars and "hessian.top1" not in ov.scalars
    assert {"train.augment.rotation", "train.method.name"} <= set(ov.axes)
    assert "curve invariance.rotation: only in advinv" in ov.not_shared
    assert "scalar hessian.top1: only in advinv" in ov.not_shared
    assert any(n.startswith("curve hessian.density: x means") for n in ov.not_shared)
    # The demo gives both studies trials with the same ids: each stays its own row.
    ta, tb = load(a), load(b)
    assert len(ov.trials) == len(ta.completed) + len(tb.completed) == 8 + 5
    assert ov.trials["trial_id"].is_unique
    assert set(ov.trials.loc[ov.trials["study"] == "cusp", "trial_id"]) == {f"cusp/{t}" for t in tb.completed["trial_id"]}


def test_overlay_values_are_each_studys_own_means(two_studies):
    a, b = two_studies
    ov = combine([a, b])
    ta = load(a)
    ids = ta.completed.query("`train.method.name` == 'pgd_at' and `train.augment.rotation` == 180")["trial_id"]
    src = ta.curves[ta.curves["trial_id"].isin(ids) & (ta.curves["metric"] == "robustness.pgd")]
    want = src.groupby("x")["accuracy"].mean()
    got = ov.curves[(ov.curves["study"] == "advinv") & (ov.curves["config"] == "method=pgd_at, rotation=180")
                    & (ov.curves["metric"] == "robustness.pgd")].groupby("x")["accuracy"].mean()
    np.testing.assert_allclose(got.to_numpy(), want.to_numpy(), rtol=0, atol=0)
    charts = {stem: chart.to_dict() for stem, _, chart in overlay_charts(ov)}
    assert "profile-robustness.pgd" in charts and "points-accuracy" in charts
    assert "line-accuracy-train.augment.rotation" in charts
    for spec in charts.values():
        assert spec["encoding"]["color"]["field"] == "study"
    # The profile: one line per (study, configuration) with that configuration's mean at each x.
    prof = charts["profile-robustness.pgd"]
    rows = pd.DataFrame(next(iter(prof["datasets"].values())))
    assert set(rows["study"]) == {"advinv", "cusp"}
    assert rows.groupby(["study", "config"]).ngroups == 4 + 3
    pick = rows[(rows["study"] == "advinv") & (rows["config"] == "method=pgd_at, rotation=180")].sort_values("x")
    np.testing.assert_allclose(pick["mean"].to_numpy(), want.to_numpy())


def test_raystudy_report_with_two_folders_writes_the_overlay_page(two_studies, tmp_path, capsys):
    a, b = two_studies
    out = tmp_path / "both.html"
    assert main(["report", str(a), str(b), "--out", str(out)]) == 0
    text = out.read_text()
    assert "advinv" in text and "cusp" in text and "only in advinv" in text
    n = text.count('class="chart"')
    assert n == len(overlay_charts(combine([a, b])))
    pngs = sorted((tmp_path / "both").glob("*.png"))
    assert len(pngs) == n and all(p.stat().st_size > 5_000 for p in pngs)
    summary = pd.read_csv(tmp_path / "both" / "summary.csv")
    assert set(summary["study"]) == {"advinv", "cusp"} and "accuracy" in summary.columns
    # One folder: the study's own report, as before.
    assert main(["report", str(a), "--no-png"]) == 0
    assert (a / "report.html").is_file()


def test_cross_report_errors_name_the_folder(two_studies, tmp_path, capsys):
    a, _ = two_studies
    assert main(["report", str(a), str(tmp_path / "nope")]) == 2
    assert "nope" in capsys.readouterr().err
    empty = write_demo_results(tmp_path / "empty", name="empty", failed=0, pending=8, seeds=(0, 1))
    with pytest.raises(StudyError, match="no completed trials in .*empty"):
        combine([a, empty])
    with pytest.raises(StudyError, match="two or more"):
        build_cross_report([a])


@pytest.mark.slow
def test_overlay_page_draws_every_chart_in_chromium(two_studies, tmp_path):
    from test_report import assert_page_ok
    a, b = two_studies
    out = build_cross_report([a, b], tmp_path / "both.html", png=False)
    assert "<script src" not in out.read_text()
    assert_page_ok(out, tmp_path / "both.png", len(overlay_charts(combine([a, b]))))
