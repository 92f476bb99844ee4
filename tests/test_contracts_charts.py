"""Contract test of every registered report chart: each builds from a recorded results folder
(the real ResultStore format, analysis.demo's synthetic values), draws what the tables hold and
renders to PNG with vl-convert (real Altair, real Vega). A chart registered without a case here
fails."""

from __future__ import annotations

import struct

import numpy as np
import pandas as pd
import pytest
import vl_convert

from analysis.demo import write_demo_results
from analysis.load import load
from analysis.report import VL_VERSION, build_chart
from raystudy.registry import CHARTS

ROT, METHOD = "train.augment.rotation", "train.method.name"


def layer_rows(spec: dict, i: int | None = None) -> pd.DataFrame:
    """The rows a chart (or its i-th layer) draws."""
    part = spec if i is None else spec["layer"][i]
    name = part.get("data", spec.get("data"))["name"]
    return pd.DataFrame(spec["datasets"][name])


def seed_means(tables, by: list[str], value: str) -> pd.Series:
    return tables.values([value]).groupby(by)[value].mean()


def check_line(spec, tables):
    got = layer_rows(spec, 1).set_index(["train_method_name", "train_augment_rotation"])["mean"].sort_index()
    assert got.tolist() == pytest.approx(seed_means(tables, [METHOD, ROT], "hessian.top1").sort_index().tolist())


def check_bar(spec, tables):
    got = layer_rows(spec, 0).set_index(["train_augment_rotation", "train_method_name"])["mean"].sort_index()
    assert got.tolist() == pytest.approx(seed_means(tables, [ROT, METHOD], "accuracy").sort_index().tolist())
    assert len(layer_rows(spec, 2)) == len(tables.completed)          # every seed drawn as a dot


def check_profile(spec, tables):
    rows = layer_rows(spec)
    # At ε = 0 the attack changes nothing: the curve starts at the clean accuracy.
    at0 = rows[rows["x"] == 0].set_index("train_method_name")["mean"].sort_index()
    assert at0.tolist() == pytest.approx(seed_means(tables, [METHOD], "accuracy").sort_index().tolist())
    assert spec["layer"][1]["encoding"]["x"]["title"] == "ε (L∞ pixel units)"   # the curves' x_title


def check_epochs(spec, tables):
    got = layer_rows(spec, 1).set_index(["train_method_name", "epoch"])["mean"].sort_index()
    ep = tables.epochs_with_config()
    ep = ep[ep["trial_id"].isin(tables.completed["trial_id"])]
    assert got.tolist() == pytest.approx(ep.groupby([METHOD, "epoch"])["val_accuracy"].mean().sort_index().tolist())


def check_pareto(spec, tables):
    # demo.py: rotation 180 makes a model fully rotation invariant, PGD-AT makes it robust at 8/255;
    # natural training without rotation is worse in both than PGD-AT with rotation, the rest trade off.
    front = layer_rows(spec, 0)
    assert sorted(front["label"]) == ["method=natural, rotation=180", "method=pgd_at, rotation=0",
                                      "method=pgd_at, rotation=180"]


def check_heatmap(spec, tables):
    got = layer_rows(spec, 0).set_index(["train_augment_rotation", "train_method_name"])["mean"].sort_index()
    assert got.tolist() == pytest.approx(seed_means(tables, [ROT, METHOD], "accuracy").sort_index().tolist())


def check_density(spec, tables):
    rows = layer_rows(spec)
    assert set(rows["trial_id"]) == set(tables.completed["trial_id"])   # one line per trial
    assert spec["encoding"]["x"]["title"] == "eigenvalue" and spec["encoding"]["y"]["scale"]["type"] == "log"
    # The outlier bump sits at each trial's top eigenvalue (demo: 20 natural, 40 PGD-AT).
    bump = rows[rows["x"] > 10].loc[lambda d: d.groupby("trial_id")["density"].idxmax()]
    top1 = tables.completed.set_index("trial_id")["hessian.top1"]
    assert (abs(bump.set_index("trial_id")["x"] - top1.reindex(bump["trial_id"])) <= 1.0).all()


def check_transfer(spec, tables):
    cells = layer_rows(spec, 0)
    # demo transfer table: 0.8 + 0.01·i when a model attacks itself, 0.2 + 0.01·i otherwise, and
    # 0.1 less for pgd: selecting fgsm keeps every white-box cell at 0.8 or more.
    own = cells["source_trial"] == cells["target_trial"]
    assert own.sum() == 4 and (cells.loc[own, "mean"] >= 0.8 - 1e-9).all()
    assert (cells.loc[~own, "mean"] < 0.3).all() and (cells["n"] == 1).all()


def check_table(spec, tables):
    rows = layer_rows(spec, 0)
    acc = tables.completed.groupby("label")["accuracy"]
    cell = rows[(rows["column"] == "clean") & (rows["label"] == "method=natural, rotation=0")]
    m, s = acc.mean()["method=natural, rotation=0"], acc.std()["method=natural, rotation=0"]
    assert cell["text"].item() == f"{m:.3f} ± {s:.3f}"
    assert list(spec["layer"][0]["encoding"]["x"]["sort"]) == ["clean", "top eigenvalue"]


def check_cusp_table(spec, tables):
    rows = layer_rows(spec, 0)
    assert list(dict.fromkeys(rows["column"])) == ["natural", "spatial T180", "adversarial 8/255"]
    # A model trained with rotations in ±180° keeps its accuracy under any rotation.
    spatial = rows[rows["column"] == "spatial T180"].set_index("label")["mean"]
    natural = rows[rows["column"] == "natural"].set_index("label")["mean"]
    full = [lab for lab in spatial.index if "rotation=180" in lab]
    assert spatial[full].tolist() == pytest.approx(natural[full].tolist())


def check_surface(spec, tables):
    cells = pd.DataFrame(spec["datasets"][spec["data"]["name"]])
    # At θ = 0, ε = 0 the surface is the clean accuracy (demo.py), one panel per method.
    at0 = cells[(cells["x"] == 0) & (cells["eps"] == 0)].set_index("train_method_name")["mean"].sort_index()
    assert at0.tolist() == pytest.approx(seed_means(tables, [METHOD], "accuracy").sort_index().tolist())
    assert len(cells) == 2 * 3 * 2                                  # methods x angles x eps
    assert spec["facet"]["column"]["title"] == METHOD
    assert spec["spec"]["layer"][0]["encoding"]["x"]["title"] == "rotation θ (degrees), then L∞ PGD at ε"


def check_corruption(spec, tables):
    rows = layer_rows(spec)
    assert spec["facet"]["sort"] == ["brightness", "rotate", "mean"]
    # demo.py: rotation at severity s costs 12·s % of the accuracy of a model trained without
    # rotations and nothing to one trained with rotations in ±180°.
    at5 = rows[(rows["corruption"] == "rotate") & (rows["x"] == 5)].set_index("train_augment_rotation")["mean"]
    clean = seed_means(tables, [ROT], "accuracy")
    assert at5.sort_index().tolist() == pytest.approx([clean[0] * 0.4, clean[180]])
    assert spec["spec"]["encoding"]["x"]["title"] == "severity"


CASES = {
    "line": ({"chart": "line", "x": ROT, "y": "hessian.top1", "color": METHOD}, check_line),
    "bar": ({"chart": "bar", "x": ROT, "y": "accuracy", "color": METHOD}, check_bar),
    "profile": ({"chart": "profile", "metric": "robustness.pgd", "color": METHOD}, check_profile),
    "epochs": ({"chart": "epochs", "y": "val_accuracy", "color": METHOD}, check_epochs),
    "pareto": ({"chart": "pareto", "x": "invariance.rotation@180", "y": "robustness.pgd@8/255"}, check_pareto),
    "heatmap": ({"chart": "heatmap", "x": ROT, "y": METHOD, "value": "accuracy"}, check_heatmap),
    "density": ({"chart": "density", "color": METHOD}, check_density),
    "transfer": ({"chart": "transfer", "select": {"attack": "fgsm"}}, check_transfer),
    "table": ({"chart": "table", "columns": {"clean": "accuracy", "top eigenvalue": "hessian.top1"}}, check_table),
    "cusp_table": ({"chart": "cusp_table"}, check_cusp_table),
    "surface": ({"chart": "surface", "column": METHOD}, check_surface),
    "corruption": ({"chart": "corruption", "color": ROT}, check_corruption),
}


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    return load(write_demo_results(tmp_path_factory.mktemp("charts") / "demo"))


@pytest.mark.parametrize("name", CHARTS.names())
def test_chart_builds_from_recorded_results_and_renders(name, tables):
    if name not in CASES:
        pytest.fail(f"chart '{name}' is registered but has no case in tests/test_contracts_charts.py")
    entry, check = CASES[name]
    spec = build_chart(tables, entry, 0).to_dict()   # validates against the Vega-Lite schema
    check(spec, tables)
    png = vl_convert.vegalite_to_png(spec, vl_version=VL_VERSION)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = struct.unpack(">II", png[16:24])
    assert w > 200 and h > 100
    # Not blank: the image has more than a background colour and a few axis greys.
    import io
    from PIL import Image
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).reshape(-1, 3)
    assert len(np.unique(pixels, axis=0)) > 20


def test_every_registered_chart_has_a_case():
    assert sorted(CHARTS.names()) == sorted(CASES)
