"""Report charts are classes that build themselves: a new chart is one class, selected by
`chart:` through the registry, drawn on the page with its PNG/SVG files; analysis/ imports
neither Ray nor torch."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Literal

import altair as alt
import pandas as pd
import pytest

from analysis import charts
from analysis.demo import write_demo_results
from analysis.report import Chart, ChartData, build_report, parse_report, report_chart, validate_report
from raystudy.errors import StudyError
from raystudy.registry import CHARTS

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def scratch_registry(monkeypatch):
    """Charts registered inside a test disappear after it (the built-in ones stay)."""
    CHARTS.names()   # load the built-in charts first
    monkeypatch.setattr(CHARTS, "_entries", dict(CHARTS._entries))


def define_scatter():
    @report_chart
    class Scatter(Chart):
        """One point per completed trial."""
        chart: Literal["scatter"]
        x: str
        y: str

        def describe(self) -> str:
            return f"{self.y} against {self.x}"

        def build(self, data: ChartData) -> alt.TopLevelMixin:
            df, f = charts.prep(data.values([self.x, self.y], ["x", "y"]), [self.x, self.y, "label"])
            return alt.Chart(df).mark_point().encode(x=alt.X(f[self.x], type="quantitative", title=self.x),
                                                     y=alt.Y(f[self.y], type="quantitative", title=self.y),
                                                     tooltip=[f["label"]])
    return Scatter


def test_a_new_chart_is_one_class(tmp_path, scratch_registry):
    Scatter = define_scatter()
    assert "scatter" in CHARTS.names() and CHARTS.get("scatter").schema is Scatter
    entry = {"chart": "scatter", "x": "accuracy", "y": "hessian.top1", "where": {"train.method.name": "pgd_at"}}
    assert validate_report([entry]) == []
    assert isinstance(parse_report([entry])[0], Scatter)
    # Its keys are checked like every built-in chart's, with the valid ones suggested.
    err = validate_report([{"chart": "scater", "x": "a", "y": "b"}, {"chart": "scatter", "x": "a", "yy": "b"}])
    assert "did you mean 'scatter'" in err[0].render()
    assert [e.path for e in err[1:]] == ["report.1.y", "report.1.yy"] and "did you mean 'y'" in err[2].render()
    out = write_demo_results(tmp_path / "demo", report=[entry, {"chart": "scatter", "x": "accuracy", "y": "nope"}])
    html = build_report(out, png=True)
    text = html.read_text()
    assert "1. scatter: hessian.top1 against accuracy" in text and 'data-chart="scatter"' in text
    assert "report.1.y: no column &#x27;nope&#x27;" in text          # the data check names the key
    assert (out / "report" / "01-scatter.png").stat().st_size > 1_000
    assert (out / "report" / "01-scatter.svg").read_text().startswith("<svg")
    spec = json.loads(re.search(r"const SPECS = (.*);\n", text).group(1))["chart-1"]
    points = pd.DataFrame(spec["datasets"][spec["data"]["name"]])
    done = pd.read_csv(out / "report" / "trials.csv")
    want = done[done["train.method.name"] == "pgd_at"]
    assert sorted(points["accuracy"]) == pytest.approx(sorted(want["accuracy"]))


def test_registered_charts_are_the_classes_the_union_selects():
    for name in CHARTS.names():
        entry = CHARTS.get(name)
        assert entry.obj is entry.schema and issubclass(entry.obj, Chart)
    assert type(parse_report([{"chart": "cusp_table"}])[0]) is CHARTS.get("cusp_table").obj
    with pytest.raises(TypeError, match="Literal"):
        @report_chart
        class NoName(Chart):
            pass
    with pytest.raises(ValueError, match="registered twice"):
        report_chart(CHARTS.get("line").obj)


def test_a_chart_data_check_names_the_entry_key(tmp_path):
    from analysis.load import load
    from analysis.report import build_chart
    tables = load(write_demo_results(tmp_path / "demo"))
    with pytest.raises(StudyError) as e:
        build_chart(tables, {"chart": "heatmap", "x": "train.augment.rotation", "y": "seedd", "value": "accuracy"}, 3)
    assert e.value.path == "report.3.y" and "did you mean 'seed'" in e.value.render()
    with pytest.raises(StudyError) as e:
        build_chart(tables, {"chart": "transfer", "select": {"atack": "pgd"}}, 2)
    assert e.value.path == "report.2.select.atack"


def test_analysis_imports_neither_ray_nor_torch():
    # The registry loads the chart classes on first use, without Ray or torch either.
    code = ("import sys\n"
            "from raystudy.registry import CHARTS\n"
            "assert len(CHARTS.names()) >= 10\n"
            "import analysis.report, analysis.load, analysis.charts, analysis.pareto, analysis.aggregate\n"
            "print(sorted(m for m in ('torch', 'ray') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
