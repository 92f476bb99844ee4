"""Chart builders on hand-built tables in the documented formats: valid Vega-Lite, the
expected encodings, aggregated values that match the input, and a PNG render."""

import struct

import numpy as np
import pandas as pd
import pytest
import vl_convert

from analysis import charts
from analysis.report import VL_VERSION

RNG = np.random.default_rng(0)


def trials_table():
    rows = []
    for bs in (32, 128, 512):
        for rule in ("fixed", "constant_ratio"):
            for seed in (0, 1, 2):
                rows.append({"trial_id": f"{bs}{rule[0]}{seed}", "status": "completed", "train.batch_size": bs,
                             "lr_rule": rule, "seed": seed, "accuracy": 0.9 - bs / 5120 + 0.01 * seed,
                             "hessian.top1": bs / 8 * (1 if rule == "fixed" else 0.5) + seed,
                             "label": f"batch_size={bs}, lr_rule={rule}"})
    return pd.DataFrame(rows)


def curves_table(tr):
    rows = []
    for _, t in tr.iterrows():
        for eps in (0.0, 0.1, 0.2):
            rows.append({"trial_id": t.trial_id, "metric": "robustness.pgd", "x": eps,
                         "accuracy": t.accuracy * (1 - eps * t["train.batch_size"] / 512), "consistency": 1 - eps,
                         "train.batch_size": t["train.batch_size"], "lr_rule": t.lr_rule, "seed": t.seed})
        for ev in np.linspace(-2, 20, 23):
            rows.append({"trial_id": t.trial_id, "metric": "hessian.density", "x": ev,
                         "density": float(np.exp(-ev ** 2)), "train.batch_size": t["train.batch_size"],
                         "lr_rule": t.lr_rule, "seed": t.seed})
    return pd.DataFrame(rows)


def walk(obj, key):
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == key:
                yield v
            yield from walk(v, key)
    elif isinstance(obj, list):
        for v in obj:
            yield from walk(v, key)


def layer_data(spec, i):
    """Rows of the dataset the i-th layer uses."""
    name = spec["layer"][i].get("data", spec.get("data"))["name"]
    return pd.DataFrame(spec["datasets"][name])


def png_size(chart):
    png = vl_convert.vegalite_to_png(chart.to_dict(), vl_version=VL_VERSION)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = struct.unpack(">II", png[16:24])
    return w, h


def check_common(chart):
    spec = chart.to_dict()  # validates against the Vega-Lite schema
    assert spec["$schema"].endswith(f"v{VL_VERSION.split('.')[0]}.{VL_VERSION.split('.')[1]}.1.json") or \
        "vega-lite" in spec["$schema"]
    # Dotted names would be read as nested fields: builders must rename them.
    assert all("." not in f for f in walk(spec, "field") if isinstance(f, str))
    w, h = png_size(chart)
    assert w > 200 and h > 150
    return spec


def test_profile_chart_means_bands_and_encodings():
    tr = trials_table()
    spec = check_common(charts.profile_chart(curves_table(tr), "robustness.pgd", color="train.batch_size",
                                             column="lr_rule"))
    inner = spec["spec"]
    assert [l["mark"]["type"] if isinstance(l["mark"], dict) else l["mark"] for l in inner["layer"]] == ["area", "line"]
    line = inner["layer"][1]["encoding"]
    assert line["x"]["field"] == "x" and line["y"]["field"] == "mean"
    assert line["color"]["field"] == "train_batch_size" and line["color"]["title"] == "train.batch_size"
    assert spec["facet"]["column"]["field"] == "lr_rule"
    data = pd.DataFrame(spec["datasets"][spec["data"]["name"]])
    row = data[(data.train_batch_size == 128) & (data.lr_rule == "fixed") & (data.x == 0.1)].iloc[0]
    accs = [(0.9 - 128 / 5120 + 0.01 * s) * (1 - 0.1 * 128 / 512) for s in range(3)]
    assert row["mean"] == pytest.approx(np.mean(accs)) and row["n"] == 3
    assert row["lo"] < row["mean"] < row["hi"]
    assert "95% CI" in spec["title"]["subtitle"]
    with pytest.raises(ValueError, match="no curve rows"):
        charts.profile_chart(curves_table(tr), "invariance.rotation")


def test_line_chart_hessian_vs_batch_size():
    spec = check_common(charts.line_chart(trials_table(), "train.batch_size", "hessian.top1", color="lr_rule",
                                          log_x=True))
    line = spec["layer"][1]["encoding"]
    assert line["x"]["scale"]["type"] == "log" and line["x"]["title"] == "train.batch_size"
    data = layer_data(spec, 1)
    got = data[(data.lr_rule == "fixed") & (data.train_batch_size == 512)]["mean"].item()
    assert got == pytest.approx(512 / 8 + 1)  # seeds 0,1,2 add 1 on average


def test_bar_chart_error_bars_clipped_to_rates_and_seed_points():
    tr = trials_table()
    spec = check_common(charts.bar_chart(tr, "train.batch_size", "accuracy", color="lr_rule"))
    marks = [l["mark"]["type"] if isinstance(l["mark"], dict) else l["mark"] for l in spec["layer"]]
    assert marks == ["bar", "errorbar", "circle"]
    bars = layer_data(spec, 0)
    assert bars["lo"].min() >= 0 and bars["hi"].max() <= 1
    assert len(layer_data(spec, 2)) == len(tr)  # every seed drawn as a point


def test_heatmap_cells_are_seed_means():
    spec = check_common(charts.heatmap_chart(trials_table(), "train.batch_size", "lr_rule", "hessian.top1"))
    data = layer_data(spec, 0)
    assert len(data) == 6
    cell = data[(data.train_batch_size == 32) & (data.lr_rule == "constant_ratio")]["mean"].item()
    assert cell == pytest.approx(32 / 8 * 0.5 + 1)
    assert spec["layer"][1]["mark"]["type"] == "text"


def test_pareto_chart_front_line_and_labels():
    tr = trials_table()
    tr["adv"] = 1 - tr["accuracy"]  # a pure trade-off: every configuration is on the front
    tr.loc[tr.lr_rule == "constant_ratio", "adv"] -= 0.2  # ... except constant_ratio, now dominated
    spec = check_common(charts.pareto_chart(tr, "accuracy", "adv"))
    front = layer_data(spec, 0)
    assert sorted(front["label"]) == sorted(f"batch_size={b}, lr_rule=fixed" for b in (32, 128, 512))
    assert spec["layer"][0]["mark"]["interpolate"] == "step-before"
    labels = pd.concat([layer_data(spec, 2), layer_data(spec, 3)])
    assert len(labels) == 6 and set(labels["label"]) == set(tr["label"])
    pts = layer_data(spec, 1)
    assert (pts["n"] == 3).all()
    # Minimizing y flips the staircase and the front.
    spec2 = charts.pareto_chart(tr, "accuracy", "adv", minimize=["adv"]).to_dict()
    assert spec2["layer"][0]["mark"]["interpolate"] == "step-before"
    assert set(layer_data(spec2, 0)["label"]) == {"batch_size=32, lr_rule=constant_ratio"}
    # A third objective: no staircase, front still marked.
    tr["third"] = 1.0
    spec3 = charts.pareto_chart(tr, "accuracy", "adv", maximize=["third"]).to_dict()
    assert spec3["layer"][0]["mark"]["type"] == "point" and "third" in spec3["title"]["text"]


def test_density_chart_log_axis_drops_the_invisible_tail():
    cur = curves_table(trials_table())
    spec = check_common(charts.density_chart(cur, color="train.batch_size"))
    data = pd.DataFrame(spec["datasets"][spec["data"]["name"]])
    assert data["density"].min() > 1e-8 and spec["encoding"]["y"]["scale"]["type"] == "log"
    assert spec["encoding"]["detail"]["field"] == "trial_id"
    lin = charts.density_chart(cur, log_y=False).to_dict()
    assert len(pd.DataFrame(lin["datasets"][lin["data"]["name"]])) == (cur.metric == "hessian.density").sum()


def test_transfer_matrix_values():
    df = pd.DataFrame([{"source": a, "target": b, "accuracy": 0.1 * i + 0.05 * j}
                       for i, a in enumerate("ABC") for j, b in enumerate("ABC")])
    spec = check_common(charts.transfer_chart(df))
    data = layer_data(spec, 0)
    assert data[(data.source == "C") & (data.target == "B")]["mean"].item() == pytest.approx(0.25)
    assert spec["layer"][0]["encoding"]["x"]["field"] == "target"


def test_cusp_table_cells_read_mean_plus_minus_std():
    tr = trials_table()
    tr["invariance.rotation@180"] = 0.4
    tr["robustness.pgd@8/255"] = [0.1, 0.2, 0.3] * 6
    spec = check_common(charts.cusp_table_chart(tr))
    data = layer_data(spec, 0)
    adv = data[(data.column == "adversarial 8/255") & (data.label == "batch_size=32, lr_rule=fixed")]
    assert adv["text"].item() == "0.200 ± 0.100"
    assert set(data["column"]) == {"natural", "spatial T180", "adversarial 8/255"}
    assert spec["layer"][0]["encoding"]["x"]["sort"] == list(charts.CUSP_COLUMNS)


def test_epochs_chart_groups_by_epoch():
    ep = pd.DataFrame([{"trial_id": f"t{s}", "epoch": e, "val_accuracy": 0.5 + 0.1 * e + 0.01 * s, "rot": r}
                       for s in range(2) for e in (1, 2, 3) for r in (0,)])
    spec = check_common(charts.epochs_chart(ep, color="rot"))
    data = layer_data(spec, 1)
    assert data.sort_values("epoch")["mean"].tolist() == pytest.approx([0.605, 0.705, 0.805])


def test_curves_title_their_own_x_axis_and_old_results_get_a_neutral_x():
    # Each metric writes its x-axis title into its curve rows (x_title); the chart never guesses
    # it from the metric's name, so a folder recorded before x_title existed shows a plain "x".
    cur = curves_table(trials_table())
    cur["x_title"] = np.where(cur["metric"] == "robustness.pgd", "ε (L∞ pixel units)", "eigenvalue")
    prof = charts.profile_chart(cur, "robustness.pgd").to_dict()
    assert {l["encoding"]["x"]["title"] for l in prof["layer"]} == {"ε (L∞ pixel units)"}
    assert "ε (L∞ pixel units)" in [t.get("title") for t in prof["layer"][1]["encoding"]["tooltip"]]
    dens = charts.density_chart(cur).to_dict()
    assert dens["encoding"]["x"]["title"] == "eigenvalue"
    assert charts.profile_chart(cur, "robustness.pgd", x_title="eps").to_dict()["layer"][0]["encoding"]["x"]["title"] == "eps"
    old = cur.drop(columns="x_title")
    assert {l["encoding"]["x"]["title"] for l in charts.profile_chart(old, "robustness.pgd").to_dict()["layer"]} == {"x"}
    assert charts.density_chart(old).to_dict()["encoding"]["x"]["title"] == "x"
    assert charts.curve_x_title(old.assign(x_title=None)) == "x"
