"""The report's uncertainty and health: Wilson bands on profiles, a health badge per trial, the
health table, charts restricted to healthy trials, and `raystudy status` listing unhealthy
trials (on recorded folders: analysis.demo writes the real table format)."""

from __future__ import annotations

import re
import sys
import types

import numpy as np
import pandas as pd
import pytest

from analysis import charts
from analysis.demo import UNHEALTHY, write_demo_results
from analysis.health import health_table, judge_tables
from analysis.load import load
from analysis.report import build_chart, build_report, validate_report
from raystudy.stats import add_intervals, wilson


def _curves(seeds=(0,), n=200):
    rows = []
    for m, base in (("natural", 0.9), ("pgd_at", 0.7)):
        for s in seeds:
            for eps in (0.0, 0.1, 0.2):
                acc = round((base - eps + 0.01 * s) * n) / n
                rows.append(add_intervals({"trial_id": f"{m}{s}", "metric": "robustness.pgd", "x": eps,
                                           "accuracy": acc, "method": m, "seed": s}, n))
    return pd.DataFrame(rows)


def _band(spec) -> pd.DataFrame:
    return pd.DataFrame(spec["datasets"][spec["data"]["name"]]).set_index(["method", "x"])


def test_one_seed_profile_draws_each_points_wilson_interval():
    cur = _curves()
    spec = charts.profile_chart(cur, "robustness.pgd", color="method").to_dict()
    band = _band(spec)
    for r in cur.itertuples():
        got = band.loc[(r.method, r.x)]
        assert (got["lo"], got["hi"]) == pytest.approx(wilson(round(r.accuracy * 200), 200))
        assert (got["lo"], got["hi"]) == pytest.approx((r.accuracy_lo, r.accuracy_hi))
    assert spec["title"]["subtitle"] == "band: 95% Wilson interval over the evaluated images (n=200 images)"
    assert [layer["mark"]["type"] for layer in spec["layer"]] == ["area", "line"]


def test_several_seeds_draw_the_wider_of_the_seed_ci_and_the_wilson_interval():
    from analysis.aggregate import aggregate
    cur = _curves(seeds=(0, 1, 2), n=1000)
    band = _band(charts.profile_chart(cur, "robustness.pgd", color="method").to_dict())
    agg = aggregate(cur, ["method", "x"], "accuracy").set_index(["method", "x"])
    wil = cur.groupby(["method", "x"])[["accuracy_lo", "accuracy_hi"]].mean()
    for key in band.index:
        assert band.loc[key, "lo"] == pytest.approx(min(agg.loc[key, "ci_low"], wil.loc[key, "accuracy_lo"]))
        assert band.loc[key, "hi"] == pytest.approx(max(agg.loc[key, "ci_high"], wil.loc[key, "accuracy_hi"]))
        assert band.loc[key, "lo"] <= band.loc[key, "mean"] <= band.loc[key, "hi"]
    # Three seeds 0.01 apart: the seed CI (t = 4.30) is wider than the Wilson interval of 1000 images.
    assert (band["hi"] - band["lo"]).min() > 0.04
    ci = _band(charts.profile_chart(cur, "robustness.pgd", color="method", band="ci").to_dict())
    assert np.allclose(ci["lo"], agg.loc[ci.index, "ci_low"])
    only = _band(charts.profile_chart(cur, "robustness.pgd", color="method", band="wilson").to_dict())
    assert np.allclose(only["lo"], wil.loc[only.index, "accuracy_lo"])


def test_curves_without_intervals_keep_the_seed_band():
    cur = _curves(seeds=(0, 1)).drop(columns=["accuracy_lo", "accuracy_hi"])
    spec = charts.profile_chart(cur, "robustness.pgd", color="method").to_dict()
    assert "95% CI over seeds" in spec["title"]["subtitle"]
    with pytest.raises(ValueError, match="no Wilson interval"):
        charts.profile_chart(cur, "robustness.pgd", band="wilson")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return write_demo_results(tmp_path_factory.mktemp("demo") / "demo")


def test_report_has_a_health_badge_per_trial_a_health_table_and_healthy_counts(demo):
    html = build_report(demo, out=demo / "r.html", png=False).read_text()
    section = html[html.index("<h2>Health</h2>"):html.index("<h2>1.")]
    assert "9 of 10 completed trials healthy" in section and "1 unhealthy" in section
    rows = re.findall(r"<tr>\s*<td>(\w+)</td>.*?<span class=\"badge (\w+)\">", section, flags=re.S)
    assert len(rows) == 10 and dict(rows)[UNHEALTHY] == "bad"
    assert {k for k, v in rows if v == "ok"} == {t for t, _ in rows} - {UNHEALTHY}
    assert "robustness.pgd.gradient_free_gap" in section
    csv = pd.read_csv(demo / "r" / "health.csv")
    assert csv.set_index("trial_id").loc[UNHEALTHY, "flags"] == "robustness.pgd.gradient_free_gap"
    summary = pd.read_csv(demo / "r" / "summary.csv").set_index("label")
    assert summary.loc["method=pgd_at, rotation=0", "healthy"] == "2/3"
    assert summary.loc["method=natural, rotation=0", "healthy"] == "3/3"
    assert not any(c.startswith("health.") for c in summary.columns)
    table = health_table(load(demo))
    assert list(table.columns[:4]) == ["trial_id", "label", "health", "flags"]
    assert table.set_index("trial_id").loc[UNHEALTHY, "health.robustness.pgd.gradient_free_gap"] == 0.12


@pytest.mark.parametrize("entry", [{"healthy_only": True}, {"where": {"health.ok": True}}])
def test_charts_can_leave_unhealthy_trials_out(demo, entry):
    tables = load(demo)
    bar = {"chart": "bar", "x": "train.augment.rotation", "y": "accuracy", "color": "train.method.name"}
    spec, full = build_chart(tables, {**bar, **entry}).to_dict(), build_chart(tables, bar).to_dict()

    def points(s):
        return pd.DataFrame(s["datasets"][s["layer"][2]["data"]["name"]])

    assert len(points(full)) == 10 and len(points(spec)) == 9
    assert UNHEALTHY not in set(points(spec)["trial_id"])
    prof = build_chart(tables, {"chart": "profile", "metric": "robustness.pgd", **entry}).to_dict()
    n = pd.DataFrame(prof["datasets"][prof["data"]["name"]]).groupby("x")["n"].sum()
    assert (n == 9).all()


def test_healthy_only_is_noted_in_the_heading_and_validated(demo):
    from analysis.report import _section, parse_report
    tables = judge_tables(load(demo))
    e = parse_report([{"chart": "bar", "x": "train.augment.rotation", "y": "accuracy", "healthy_only": True}])[0]
    html, _, problem = _section(tables, e, 0, demo, png=False)
    assert problem is None and "(healthy trials only: 1 unhealthy left out)" in html
    errs = validate_report([{"chart": "bar", "x": "a", "y": "b", "healthy_only": "sometimes"}])
    assert errs and errs[0].path == "report.0.healthy_only"


def test_status_lists_unhealthy_trials_with_their_flags(demo, capsys):
    from raystudy.cli import main
    assert main(["status", str(demo)]) == 0
    out = capsys.readouterr().out
    assert "1 unhealthy" in out
    assert (f"unhealthy {UNHEALTHY} (train.method.name=pgd_at, train.augment.rotation=0, seed=1): "
            "robustness.pgd.gradient_free_gap") in out
    assert out.count("unhealthy ") == 1 + 1      # the count line and the trial's line


def test_status_and_report_rejudge_under_the_studys_health_options(demo, monkeypatch, capsys):
    """`raystudy.health.judge(row, options)` decides; a tolerance in study.json's `health:`
    section re-judges recorded values without retraining (a stand-in judge with the same
    interface, until the checks' module is merged)."""
    from pydantic import BaseModel

    class Options(BaseModel):
        gap_tol: float = 0.05

    def judge(row, options):
        bad = [c for c in ("robustness.pgd.gradient_free_gap",) if row.get(f"health.{c}", 0) > options.gap_tol]
        return not bad, bad

    fake = types.ModuleType("raystudy.health")
    fake.HealthOptions, fake.judge = Options, judge
    monkeypatch.setitem(sys.modules, "raystudy.health", fake)
    import json
    plan = json.loads((demo / "study.json").read_text())
    tolerant = demo.parent / "tolerant"
    import shutil
    shutil.copytree(demo, tolerant)
    (tolerant / "study.json").write_text(json.dumps({**plan, "health": {"gap_tol": 0.2}}))
    from raystudy.cli import main
    assert main(["status", str(tolerant)]) == 0
    assert "unhealthy" not in capsys.readouterr().out
    assert judge_tables(load(tolerant)).trials["health.ok"].dropna().all()
    assert main(["status", str(demo)]) == 0
    assert f"unhealthy {UNHEALTHY}" in capsys.readouterr().out


STUCK_STUDY = """
name: stuck
data: {dataset: synthetic, train_size: 128, test_size: 64, val_fraction: 0.0}
model: {arch: stdcnn_mnist, channels: [4, 4, 8, 8], hidden: 16}
train: {epochs: 2, batch_size: 16, optimizer: {name: adam, lr: 0.01}}
space:
  variant: {zip: {train.optimizer: [{name: adam, lr: 0.01}, {name: sgd, lr: 1.0e-9}]}}
evaluate: [accuracy]
resources: {cpu: 1, gpu: 0}
"""


@pytest.mark.slow   # real Ray trials
def test_run_prints_one_warning_per_unhealthy_trial(ray_local, tmp_path, capsys):
    """A model that never moved (SGD with lr 1e-9) is flagged did_not_learn; the trained one is not."""
    pytest.importorskip("raystudy.health", reason="the checks' module (raystudy.health) is not merged yet")
    from raystudy.cli import main
    study = tmp_path / "stuck.yaml"
    study.write_text(STUCK_STUDY)
    assert main(["run", str(study), "--results", str(tmp_path / "res"), "--no-dashboard"]) == 0
    out = capsys.readouterr().out
    warnings = [ln for ln in out.splitlines() if ln.startswith("raystudy: warning: unhealthy trial")]
    assert len(warnings) == 1 and "did_not_learn" in warnings[0] and "variant=1" in warnings[0], out
    assert "1 trial(s) recorded unhealthy" in out
    assert main(["status", str(tmp_path / "res" / "stuck")]) == 0
    assert "did_not_learn" in capsys.readouterr().out
