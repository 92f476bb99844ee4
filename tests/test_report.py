"""The report: grammar validation, the HTML page opened in headless Chromium (no console
errors, every declared chart drawn, a screenshot), PNG/SVG files, and the end-to-end path
from a real Ray smoke study to `raystudy report`."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest

from analysis.demo import REPORT, write_demo_results
from analysis.load import load
from analysis.report import build_report, validate_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


# ------------------------------------------------------------------------------- grammar

def test_validate_report_errors_name_the_entry_and_key():
    errs = validate_report([
        {"chart": "lien", "x": "a", "y": "b"},
        {"chart": "line", "x": "a", "y": "b", "colour": "c"},
        {"chart": "pareto", "x": "a"},
        {"chart": "pareto", "x": "a", "y": "b", "maximize": ["a"], "minimize": ["a"]},
        {"chart": "profile", "metric": "robustness.pgd", "band": "wide"},
        "bar",
        {"x": "a"},
    ])
    text = [e.render() for e in errs]
    assert text[0].startswith("report.0.chart: unknown chart type 'lien'") and "did you mean 'line'" in text[0]
    assert text[1].startswith("report.1.colour: unknown key 'colour'") and "did you mean 'color'" in text[1]
    assert text[2].startswith("report.2.y: required key is missing")
    assert text[3].startswith("report.3") and "both maximize and minimize" in text[3]
    assert text[4].startswith("report.4.band")
    assert text[5].startswith("report.5") and "mapping" in text[5]
    assert text[6].startswith("report.6.chart: missing 'chart'")
    assert len(errs) == 7
    assert validate_report(REPORT) == [] and validate_report(None) == []
    assert validate_report({"chart": "bar"})[0].path == "report"


def test_quickstart_report_section_is_valid():
    from raystudy.spec import load_study
    study = load_study("studies/quickstart.yaml", expand_trials=False)
    assert study.spec.report and validate_report(study.spec.report) == []


# ------------------------------------------------------------------------------- browser

async def _cdp_open(url: str, shot: Path, timeout: float = 60.0) -> tuple[list, list, dict]:
    """Open `url` in headless Chromium over the DevTools protocol (aiohttp ships with Ray):
    returns (chart states, console errors, page info) and writes a full-page screenshot."""
    import aiohttp
    user_dir = tempfile.mkdtemp(prefix="raystudy-chromium-")
    proc = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={user_dir}", "--remote-debugging-port=0", "--window-size=1280,900", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        ws_url, t0 = None, time.time()
        while ws_url is None and time.time() - t0 < timeout:
            m = re.search(r"DevTools listening on (ws://\S+)", proc.stderr.readline())
            ws_url = m.group(1) if m else None
        assert ws_url, "chromium did not start"
        port = re.search(r":(\d+)/", ws_url).group(1)
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://127.0.0.1:{port}/json/list") as r:
                page = [t for t in await r.json(content_type=None) if t["type"] == "page"][0]
            async with s.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                events, n = [], 0

                async def call(method, **params):
                    nonlocal n
                    n += 1
                    await ws.send_json({"id": n, "method": method, "params": params})
                    while True:
                        msg = await ws.receive_json()
                        if msg.get("id") == n:
                            assert "error" not in msg, msg
                            return msg.get("result", {})
                        events.append(msg)

                for d in ("Runtime.enable", "Log.enable", "Page.enable"):
                    await call(d)
                await call("Page.navigate", url=url)
                probe = ("JSON.stringify({charts: [...document.querySelectorAll('.chart')].map(e => ({id: e.id,"
                         " chart: e.dataset.chart, rendered: e.dataset.rendered || '', missing: e.dataset.missing || '',"
                         " svgs: e.querySelectorAll('svg').length, marks: e.querySelectorAll('svg .mark-symbol path,"
                         " svg .mark-rect path, svg .mark-line path, svg .mark-area path, svg .mark-text text').length})),"
                         " scripts: [...document.scripts].map(s => s.src), title: document.title,"
                         " ready: document.readyState, href: location.href})")
                t0 = time.time()
                while True:
                    info = json.loads((await call("Runtime.evaluate", expression=probe, returnByValue=True))
                                      ["result"]["value"])
                    loaded = info["href"].startswith("file:") and info["ready"] == "complete"
                    if (loaded and all(c["rendered"] or c["missing"] for c in info["charts"])) \
                            or time.time() - t0 > timeout:
                        break
                    await asyncio.sleep(0.1)
                size = (await call("Page.getLayoutMetrics"))["cssContentSize"]
                shot_data = await call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                                       clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"],
                                             "scale": 1})
                shot.write_bytes(base64.b64decode(shot_data["data"]))
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(user_dir, ignore_errors=True)
    errors = [e for e in events if e.get("method") == "Runtime.exceptionThrown"
              or (e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] in ("error", "assert"))
              or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")]
    return info["charts"], errors, info


def open_in_browser(html: Path, shot: Path):
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run installs it)")
    return asyncio.run(_cdp_open(html.resolve().as_uri(), shot))


def assert_page_ok(html: Path, shot: Path, n_charts: int):
    charts, errors, info = open_in_browser(html, shot)
    assert errors == [], errors
    assert len(charts) == n_charts
    for c in charts:
        assert c["rendered"] == "1" and c["svgs"] >= 1 and c["marks"] > 0, c
    # Offline: every script is inline (no CDN src).
    assert all(src == "" for src in info["scripts"])
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


def test_demo_report_every_chart_type_in_chromium(tmp_path):
    out = write_demo_results(tmp_path / "demo")
    html = build_report(out, png=False)
    text = html.read_text()
    assert "<script src" not in text and "cdn.jsdelivr" not in text
    # The summary table, the failed and the pending trial are all on the page.
    assert "FloatingPointError" in text and "pending" in text and "Pareto attainment" in text
    assert_page_ok(html, tmp_path / "demo.png", len(REPORT))
    att = pd.read_csv(out / "report" / "pareto-07.csv")
    assert att["on_front"].any() and (att.loc[att["on_front"], "distance"] == 0).all()


def test_missing_metric_is_shown_with_a_suggestion(tmp_path, capsys):
    out = write_demo_results(tmp_path / "demo", report=[
        {"chart": "line", "x": "train.augment.rotation", "y": "hessian.top2"},
        {"chart": "profile", "metric": "robustness.pgdd"},
        {"chart": "bar", "x": "train.augment.rotation", "y": "accuracy"}])
    html = build_report(out, png=True)
    text = html.read_text()
    assert text.count('data-missing="1"') == 2
    assert "did you mean &#x27;hessian.top1&#x27;" in text and "did you mean &#x27;robustness.pgd&#x27;" in text
    err = capsys.readouterr().err
    assert "warning: report.0" in err and "warning: report.1" in err
    assert sorted(p.name for p in (out / "report").glob("*.png")) == ["03-bar.png"]


def test_a_fixed_config_value_can_facet_a_chart(tmp_path, capsys):
    # The momentum is the same in every demo trial, so trials.parquet has no column for it; a
    # chart written for a study that varies it (sgd_hparams) still draws, with one facet, from
    # the trial configs in study.json.
    m = "train.optimizer.momentum"
    out = write_demo_results(tmp_path / "demo", report=[
        {"chart": "line", "x": "train.augment.rotation", "y": "accuracy", "column": m},
        {"chart": "profile", "metric": "robustness.pgd", "color": "train.method.name", "column": m},
        {"chart": "line", "x": "train.augment.rotation", "y": "accuracy", "column": "train.optimizer.nesterov"},
        {"chart": "bar", "x": "train.augment.rotation", "y": "accuracy",
         "where": {"train.method.name": "natural", m: 0.9}}])
    html = build_report(out, png=False)
    text = html.read_text()
    assert text.count('data-missing="1"') == 1          # nesterov is in no trial's config
    assert "warning: report.2.column" in capsys.readouterr().err
    tables = load(out)
    assert m not in tables.trials.columns and tables.add_config_column(m)
    assert set(tables.trials[m]) == {0.9} and m in tables.config_columns
    assert m in tables.curves_with_config().columns
    assert not tables.add_config_column("train.method")      # a mapping is not a column
    # A trial that an earlier, wider run recorded but the current study.json does not list
    # (the study was since pinned with --set) gets an unknown value, not a missing chart.
    plan = json.loads((out / "study.json").read_text())
    gone = plan["trials"].pop(0)["trial_id"]
    (out / "study.json").write_text(json.dumps(plan))
    tables = load(out)
    assert tables.add_config_column(m)
    col = tables.trials.set_index("trial_id")[m]
    assert pd.isna(col[gone]) and (col.drop(gone) == 0.9).all()


def test_bad_report_section_is_a_study_error(tmp_path):
    from raystudy.cli import main
    out = write_demo_results(tmp_path / "demo", report=[{"chart": "pie"}])
    assert main(["report", str(out)]) == 2


# --------------------------------------------------------------------------- end to end

@pytest.mark.slow
def test_smoke_study_through_ray_to_report(ray_local, tmp_path):
    from raystudy.cli import main
    from raystudy.runner import run_study
    from raystudy.spec import load_study
    study = load_study("studies/quickstart.yaml", smoke=True)
    summary = run_study(study, tmp_path / "results", dashboard=False, verbose=False)
    assert summary.completed == len(study.trials) == 4
    out = summary.out
    assert main(["report", str(out)]) == 0
    html = out / "report.html"
    declared = study.spec.report
    assert_page_ok(html, tmp_path / "quickstart.png", len(declared))
    # Every declared chart also exists as PNG and SVG files.
    for i, e in enumerate(declared):
        assert (out / "report" / f"{i + 1:02d}-{e['chart']}.png").stat().st_size > 5_000
        assert (out / "report" / f"{i + 1:02d}-{e['chart']}.svg").read_text().startswith("<svg")
    # The bar chart's means are the seed means of trials.parquet.
    spec = json.loads(re.search(r"const SPECS = (.*);\n", html.read_text()).group(1))["chart-1"]
    bars = pd.DataFrame(spec["datasets"][spec["layer"][0]["data"]["name"]])
    trials = load(out).completed
    want = trials.groupby("train.augment.rotation")["accuracy"].mean()
    got = bars.set_index("train_augment_rotation")["mean"]
    assert got.sort_index().tolist() == pytest.approx(want.sort_index().tolist())
