"""The shipped studies: every file validates (base, --smoke, every declared profile), the
paper studies encode the papers' settings, and their smoke variants run through Ray."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from raystudy.spec.load import load_study

from helpers import assert_health_recorded

ROOT = Path(__file__).resolve().parents[1]
STUDIES = sorted((ROOT / "studies").rglob("*.yaml"))
IDS = [str(p.relative_to(ROOT / "studies")) for p in STUDIES]
PAPER_STUDIES = ["cusp", "invariance_vs_robustness", "adversarial_vs_invariance", "sgd_hparams", "sgr",
                 "svd_universal_gcnn"]


def _profiles(path: Path) -> list[str]:
    return list(load_study(path, expand_trials=False).spec.profiles)


def test_the_paper_studies_exist():
    names = {p.stem for p in STUDIES}
    assert set(PAPER_STUDIES) <= names
    assert len(STUDIES) >= 10


@pytest.mark.parametrize("path", STUDIES, ids=IDS)
def test_study_validates_base_and_smoke(path):
    base = load_study(path)
    assert base.trials, "a study expands to at least one trial"
    assert len({t.trial_id for t in base.trials}) == len(base.trials)
    smoke = load_study(path, smoke=True)
    assert smoke.trials
    # The runner refuses resources this CPU machine cannot give: --smoke must run anywhere.
    assert smoke.spec.resources.gpu == 0, "smoke: must set resources.gpu: 0"
    # Smoke is a shrunk study, never a bigger one.
    assert len(smoke.trials) <= len(base.trials)


@pytest.mark.parametrize("path", STUDIES, ids=IDS)
def test_declared_profiles_validate(path):
    for name in _profiles(path):
        study = load_study(path, profile=name)
        assert study.trials, f"profile {name}"
        if name == "cpu":
            # A reduced run on the embedded MNIST without a GPU.
            assert study.spec.resources.gpu == 0
            assert study.spec.data.dataset == "mnist"
            assert all(t.config["data"]["dataset"] == "mnist" for t in study.trials)
            # The profile composes with --smoke too.
            assert load_study(path, profile=name, smoke=True).spec.resources.gpu == 0


@pytest.mark.parametrize("name", PAPER_STUDIES)
def test_paper_studies_have_cpu_profile_and_gpu_base(name):
    path = ROOT / "studies" / f"{name}.yaml"
    base = load_study(path)
    assert base.spec.resources.gpu > 0, "the paper-scale configuration asks for a GPU"
    assert "cpu" in base.spec.profiles
    assert base.spec.report, "each paper study declares its charts"


def _by(study, key):
    return {t.params[key]: t for t in study.trials}


def test_cusp_table_rows_follow_the_paper():
    study = load_study(ROOT / "studies" / "cusp.yaml")
    rows = _by(study, "strategy")
    assert list(rows) == ["natural", "Aug 180", "PGD (Aug 0)", "PGD (Aug 180)", "Aug 180 -> PGD",
                          "PGD -> Aug 180", "CuSP (PGD)", "CuSP (TRADES)", "PGD -> CuSP", "Aug 180 -> CuSP"]
    assert {t.config["data"]["dataset"] for t in study.trials} == {"cifar10"}

    def stages(name):
        return [(s["method"]["name"], s["augment"]["rotation"], s["epochs"])
                for s in rows[name].config["train"]["stages"]]

    assert stages("natural") == [("natural", 0, 120)]
    assert stages("Aug 180") == [("natural", 180, 120)]
    assert stages("PGD (Aug 180)") == [("pgd_at", 180, 120)]
    # a -> b is a then b, on the same weights, in that order.
    assert stages("Aug 180 -> PGD") == [("natural", 180, 120), ("pgd_at", 0, 120)]
    assert stages("PGD -> Aug 180") == [("pgd_at", 0, 120), ("natural", 180, 120)]
    assert stages("PGD -> CuSP") == [("pgd_at", 0, 120), ("cusp", 0, 120)]
    assert stages("Aug 180 -> CuSP") == [("natural", 180, 120), ("cusp", 0, 120)]
    train = rows["CuSP (PGD)"].config["train"]
    assert train["schedule"] == {"name": "multistep", "milestones": [75, 90, 100], "gamma": 0.1}
    assert train["optimizer"] == {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 0.0005}
    # The paper's curriculum: (120°, 2/255) -> (150°, 4/255) -> (180°, 8/255), PGD 10 x 2/255.
    from raystudy.spec.validate import validate_trial
    parsed = validate_trial(rows["CuSP (PGD)"].config)
    cusp = parsed.stages[0].method.options
    assert list(cusp.rotations) == [120, 150, 180]
    assert [round(e * 255, 9) for e in cusp.eps] == [2, 4, 8]
    assert cusp.steps == 10 and math.isclose(cusp.step_size, 2 / 255)
    trades = validate_trial(rows["CuSP (TRADES)"].config).stages[0].method.options
    assert trades.inner == "trades" and trades.beta == 5.0
    pgd = validate_trial(rows["PGD (Aug 0)"].config).stages[0].method.options
    assert math.isclose(pgd.eps, 8 / 255) and pgd.steps == 10 and pgd.random_start


def test_cusp_cpu_profile_keeps_the_ten_rows_and_the_curriculum():
    study = load_study(ROOT / "studies" / "cusp.yaml", profile="cpu")
    rows = _by(study, "strategy")
    base = _by(load_study(ROOT / "studies" / "cusp.yaml", expand_trials=True), "strategy")
    # The paper's ten rows, plus the single-stage rows again at the two-stage budget.
    assert set(base) < set(rows) and len(rows) == 16
    assert [s["method"]["name"] for s in rows["PGD -> CuSP"].config["train"]["stages"]] == ["pgd_at", "cusp"]
    # The curriculum steps with the lr: 2 milestones for the 3 (θ, ε) pairs.
    assert rows["CuSP (PGD)"].config["train"]["schedule"]["milestones"] == [2, 3]
    epochs = {k: sum(s["epochs"] for s in t.config["train"]["stages"]) for k, t in rows.items()}
    for name in ("natural", "Aug 180", "PGD (Aug 0)", "PGD (Aug 180)", "CuSP (PGD)", "CuSP (TRADES)"):
        assert epochs[name] == 4 and epochs[f"{name}, 8 ep"] == epochs["PGD -> CuSP"] == 8
        assert rows[f"{name}, 8 ep"].config["train"]["stages"][0]["method"] == \
            rows[name].config["train"]["stages"][0]["method"]
    from raystudy.spec.validate import validate_trial
    eight = validate_trial(rows["CuSP (PGD), 8 ep"].config).stages[0]
    assert eight.schedule.options.milestones == [4, 6]


def test_invariance_study_maps_levels_to_the_papers_augmentations():
    study = load_study(ROOT / "studies" / "invariance_vs_robustness.yaml")
    assert len(study.trials) == 2 * 3 * 5
    for t in study.trials:
        aug, level = t.params["aug"], t.params["level"]
        a = t.config["train"]["augment"]
        # Aug-R: θ = i·180; Aug-T: i·28 px shifts; Aug-RT: both.
        assert a["rotation"] == (0 if aug == "T" else level * 180)
        assert a["translation"] == (0 if aug == "R" else round(level * 28))
    assert {t.config["model"]["arch"] for t in study.trials} == {"stdcnn_mnist", "gcnn_mnist"}
    cifar = load_study(ROOT / "studies" / "invariance_vs_robustness.yaml", profile="cifar10")
    for t in cifar.trials:
        a = t.config["train"]["augment"]
        # CIFAR Aug-R adds crops and flips; Aug-T / Aug-RT do not (the paper's Sec. 3).
        assert (a["crop"], a["flip"]) == ((4, True) if t.params["aug"] == "R" else (0, False))
        assert a["translation"] == (0 if t.params["aug"] == "R" else round(t.params["level"] * 32))
    assert {t.config["model"]["arch"] for t in cifar.trials} == {"vgg16", "gcnn_vgg16"}


def test_adversarial_study_puts_the_budget_inside_each_method():
    study = load_study(ROOT / "studies" / "adversarial_vs_invariance.yaml")
    seen = {(t.params["training"], t.config["train"]["method"]["name"], t.config["train"]["method"]["eps"])
            for t in study.trials}
    assert seen == {(n, m, e) for n, m in [("PGD-AT", "pgd_at"), ("TRADES", "trades")]
                    for e in (0, 0.1, 0.2, 0.3)}
    cifar = load_study(ROOT / "studies" / "adversarial_vs_invariance.yaml", profile="cifar10")
    eps = sorted({round(t.config["train"]["method"]["eps"] * 255, 6) for t in cifar.trials})
    assert eps == [0, 2, 4, 8]
    assert {(t.params["training"], t.config["model"]["arch"]) for t in cifar.trials} == \
        {("PGD-AT", "resnet_madry"), ("TRADES", "wrn34_10")}


# ------------------------------------------------------------------ smoke runs through Ray

def _run_smoke(name, tmp_path):
    from analysis.load import load
    from raystudy.runner import run_study
    study = load_study(ROOT / "studies" / f"{name}.yaml", smoke=True)
    summary = run_study(study, tmp_path / "results", dashboard=False, verbose=False)
    assert summary.failed == 0, summary.failures
    assert summary.completed == len(study.trials)
    tables = load(summary.out)
    assert (tables.trials["status"] == "completed").all()
    # The run ends with a verdict for each of the paper's claims (claims.parquet).
    claims = tables.extra["claims"]
    assert list(claims["claim"]) == [c.name for c in study.spec.claims]
    assert set(claims["verdict"]) <= {"supported", "contradicted", "inconclusive"}
    assert_health_recorded(tables.trials)
    return study, tables



def _charts_build(study, tables):
    """Every chart of the study's report section builds from the smoke run's tables."""
    from analysis.report import build_chart
    for i, entry in enumerate(study.spec.report):
        build_chart(tables, entry, i).to_dict()


def _curve(tables, metric):
    return tables.curves[tables.curves["metric"] == metric]


def _same_subset_checks(tables):
    """θ = 0 / ε = 0 leave every input unchanged: consistency 1, and both curves measure the
    clean accuracy of the same seeded subset."""
    inv, rob = _curve(tables, "invariance.rotation"), _curve(tables, "robustness.pgd")
    inv0, rob0 = inv[inv["x"] == 0].set_index("trial_id"), rob[rob["x"] == 0].set_index("trial_id")
    assert (inv0["consistency"] == 1).all() and (rob0["consistency"] == 1).all()
    pd.testing.assert_series_equal(inv0["accuracy"].sort_index(), rob0["accuracy"].sort_index(),
                                   check_names=False)


@pytest.mark.slow
def test_cusp_smoke_runs_through_ray(ray_local, tmp_path):
    study, tables = _run_smoke("cusp", tmp_path)
    t = tables.trials.set_index("strategy")
    assert set(t.index) == {"natural", "PGD (Aug 0)", "Aug 180 -> PGD", "CuSP (PGD)"}
    for col in ("accuracy", "spatial_accuracy.t180", "robustness.pgd.acc@0.1", "invariance.rotation.auc"):
        assert t[col].between(0, 1).all(), col
    # T180 is the invariance profile's accuracy at θ = 180.
    inv = _curve(tables, "invariance.rotation")
    assert set(inv["x"]) == {0, 90, 180}
    at180 = inv[inv["x"] == 180].set_index("trial_id")["accuracy"]
    tt = tables.trials.set_index("trial_id")
    assert (at180 == tt.loc[at180.index, "spatial_accuracy.t180"]).all()
    _same_subset_checks(tables)
    ep = tables.epochs.merge(tables.trials[["trial_id", "strategy"]], on="trial_id")
    seq = ep[ep["strategy"] == "Aug 180 -> PGD"].sort_values("epoch")
    # Two stages, in order: rotation 180 first, then PGD without augmentation.
    assert list(seq["stage"]) == [0, 1] and list(seq["augment.rotation"]) == [180, 0]
    cusp = ep[ep["strategy"] == "CuSP (PGD)"].sort_values("epoch")
    # The curriculum moved at its milestone: (90°, 0.05) then (180°, 0.1).
    assert list(cusp["method.theta"]) == [90, 180]
    assert list(cusp["method.eps"]) == pytest.approx([0.05, 0.1])
    # Robust validation after every epoch; each row evaluated its last stage's best epoch.
    assert ep["val.robustness.pgd.auc"].between(0, 1).all()
    assert (t["selected_by"] == "val.robustness.pgd.auc").all()
    assert t.loc["Aug 180 -> PGD", "selected_epoch"] == 2 and t.loc["natural", "selected_epoch"] == 1
    assert t.loc["CuSP (PGD)", "selected_epoch"] in (1, 2)
    # The report's CuSP table and Pareto chart build from these tables.
    _charts_build(study, tables)


@pytest.mark.slow
def test_invariance_vs_robustness_smoke_runs_through_ray(ray_local, tmp_path):
    _, tables = _run_smoke("invariance_vs_robustness", tmp_path)
    t = tables.trials
    assert set(zip(t["model.arch"], t["level"])) == {(a, l) for a in ("stdcnn_mnist", "gcnn_mnist") for l in (0, 1)}
    for metric, xs in [("invariance.rotation", {0, 90, 180}), ("invariance.translation", {0, 0.2}),
                       ("invariance.rotation_translation", {0, 0.5}), ("robustness.pgd", {0, 0.1, 0.3})]:
        c = _curve(tables, metric)
        assert len(c) == len(t) * len(xs) and set(c["x"]) == xs, metric
        assert c["consistency"].between(0, 1).all()
    _same_subset_checks(tables)
    assert t["boundary.success_rate"].between(0, 1).all()
    ok = t["boundary.n"] > 0
    assert (t.loc[ok, "boundary.l2"] > 0).all()
    # Principal angles are in [0°, 90°], sorted, k = 4 per trial, with a random reference.
    pca = _curve(tables, "perturbation_pca")
    assert len(pca) == 4 * len(t) and pca["angle"].between(0, 90).all()
    for _, g in pca.groupby("trial_id"):
        assert list(g.sort_values("x")["angle"]) == sorted(g["angle"])
    assert (t["perturbation_pca.min_angle"] <= t["perturbation_pca.mean_angle"] + 1e-9).all()


@pytest.mark.slow
def test_adversarial_vs_invariance_smoke_runs_through_ray(ray_local, tmp_path):
    _, tables = _run_smoke("adversarial_vs_invariance", tmp_path)
    t = tables.trials
    assert set(zip(t["training"], t["train.method.eps"])) == {(m, e) for m in ("PGD-AT", "TRADES") for e in (0, 0.3)}
    for col in ("accuracy", "robustness.pgd.acc@0.3", "spatial_accuracy.t180", "invariance.rotation.auc",
                "invariance.translation.auc", "invariance.rotation_translation.auc"):
        assert t[col].between(0, 1).all(), col
    _same_subset_checks(tables)
    # One epoch: robust validation after it, and it is the selected one.
    assert tables.epochs["val.robustness.pgd.auc"].between(0, 1).all()
    assert (t["selected_epoch"] == 1).all() and (t["selected_value"] == tables.epochs.set_index(
        "trial_id").loc[t["trial_id"], "val.robustness.pgd.auc"].values).all()
    # The PGD accuracy profile cannot rise with ε on the same inputs beyond the attack's noise:
    # at ε = 0 it is the clean accuracy, the largest value of the profile.
    rob = _curve(tables, "robustness.pgd")
    for _, g in rob.groupby("trial_id"):
        assert g.loc[g["x"] == 0, "accuracy"].item() >= g["accuracy"].max() - 1e-12


# The remaining studies' smoke variants, through the same runner and Ray. The paper studies
# with their own test above are left out; each of these also asserts a piece of science.

@pytest.mark.slow
def test_sgd_hparams_smoke_runs_through_ray(ray_local, tmp_path):
    study, tables = _run_smoke("sgd_hparams", tmp_path)
    t = tables.trials
    assert set(t["train.batch_size"]) == {32, 256}
    # The Hessian's top eigenvalue and the trace were measured, during training too.
    assert t["hessian.top1"].map(math.isfinite).all() and t["hessian.trace"].map(math.isfinite).all()
    _same_subset_checks_robustness(tables, "robustness.pgd")
    _charts_build(study, tables)


@pytest.mark.slow
def test_sgr_smoke_runs_through_ray_with_the_transfer_matrix(ray_local, tmp_path):
    study, tables = _run_smoke("sgr", tmp_path)
    t = tables.trials
    assert set(t["label"]) == {"clean", "fgsm", "sgr_sign"}
    tr = tables.extra["transfer"]
    # Every model's examples against every model, per attack; the diagonal is white-box.
    for _, g in tr.groupby("attack"):
        assert len(g) == len(t) ** 2
        assert (g["white_box"] == (g["source_trial"] == g["target_trial"])).all()
    assert tr["accuracy"].between(0, 1).all()
    _same_subset_checks_robustness(tables, "robustness.fgsm")
    _charts_build(study, tables)


@pytest.mark.slow
def test_svd_universal_gcnn_smoke_runs_through_ray(ray_local, tmp_path):
    study, tables = _run_smoke("svd_universal_gcnn", tmp_path)
    t = tables.trials
    assert set(zip(t["model.arch"], t["train.augment.rotation"])) == \
        {(a, r) for a in ("stdcnn_mnist", "gcnn_mnist") for r in (0, 180)}
    for a in ("gradient", "fgsm", "deepfool"):
        c = _curve(tables, f"svd_universal.{a}")
        # A perturbation of norm 0 fools nothing; rates are rates.
        assert (c.loc[c["x"] == 0, "fooling_rate"] == 0).all()
        assert c["fooling_rate"].between(0, 1).all()
    assert t["invariant_directions.angle"].between(0, 90).all()
    _charts_build(study, tables)


def _same_subset_checks_robustness(tables, metric):
    """ε = 0 leaves every input unchanged: every prediction agrees with the clean one."""
    rob = _curve(tables, metric)
    rob0 = rob[rob["x"] == 0].set_index("trial_id")
    assert (rob0["consistency"] == 1).all()


# quickstart's smoke runs in the fast suite (test_e2e_core); methods/cusp.yaml and
# methods/sgr.yaml are method studies, not the paper studies of the same name.
OTHER_STUDIES = [p for p in STUDIES
                 if str(p.relative_to(ROOT / "studies"))[:-5] not in PAPER_STUDIES + ["quickstart"]]


@pytest.mark.slow
@pytest.mark.parametrize("path", OTHER_STUDIES, ids=[str(p.relative_to(ROOT / "studies")) for p in OTHER_STUDIES])
def test_every_other_study_smoke_runs_through_ray(ray_local, tmp_path, path):
    from analysis.load import load
    from raystudy.runner import run_study
    # A warm-start study needs its source study's results in the same results root.
    source = {"finetune": "pgd_at"}.get(path.stem) if path.parent.name == "methods" else None
    if source:
        first = run_study(load_study(path.parent / f"{source}.yaml", smoke=True), tmp_path / "results",
                          dashboard=False, verbose=False)
        assert first.failed == 0, first.failures
    study = load_study(path, smoke=True)
    summary = run_study(study, tmp_path / "results", dashboard=False, verbose=False)
    assert summary.failed == 0, summary.failures
    # A searched study's trials are what the searcher proposes: its budget, not the expansion.
    search = study.spec.tune.search
    assert summary.completed == (search.num_samples if search is not None else len(study.trials))
    assert (load(summary.out).trials["status"] == "completed").all()
    assert_health_recorded(load(summary.out).trials)

