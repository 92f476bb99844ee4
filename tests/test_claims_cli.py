"""Claims around the statistics: checks before Ray starts, `raystudy claims`, the report's verdict
table, study.json, trial ids, and the script that writes docs/EXPERIMENTS.md's verdict tables."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest

from analysis.claims import write_claims
from raystudy.cli import main
from raystudy.errors import StudyError
from raystudy.spec import load_study
from claims_helpers import grid, write_results

ROOT = Path(__file__).resolve().parents[1]
STUDY = """\
name: cl
data: {dataset: synthetic, train_size: 64, test_size: 32}
model: {arch: stdcnn_mnist, channels: [4, 4, 8, 8], hidden: 16}
train: {epochs: 1, batch_size: 32, optimizer: {name: sgd, lr: 0.05}, method: {name: natural}}
space:
  train.epochs: {grid: [0, 1]}
  seed: {grid: [0, 1]}
  rule: {grid: [a, b]}
  train.optimizer.lr: {expr: "0.05 if rule == 'a' else 0.1"}
evaluate:
  - accuracy
  - robustness: {attack: pgd, eps: [0, 0.1], steps: 1, n: 16, every_epochs: 1}
resources: {cpu: 1, gpu: 0}
smoke: {train.epochs: 1}
"""


def study_with(tmp_path, claims: str, name: str = "s.yaml") -> Path:
    f = tmp_path / name
    f.write_text(STUDY + "claims:\n" + claims)
    return f


# ------------------------------------------------------------------------- validation

def test_claims_do_not_change_trial_ids(tmp_path):
    plain = tmp_path / "plain.yaml"
    plain.write_text(STUDY)
    f = study_with(tmp_path, "  - {name: c, compare: {metric: accuracy, a: {train.epochs: 1}, b: {train.epochs: 0}, "
                             "expect: greater}}\n")
    assert [t.trial_id for t in load_study(f).trials] == [t.trial_id for t in load_study(plain).trials]


@pytest.mark.parametrize("ref", ["accuracy", "robustness.pgd.auc", "robustness.pgd@0.1", "robustness.pgd@1/10:consistency",
                                 "robustness.pgd.acc@0.1", "robustness.pgd.acc@8/255", "robustness.pgd.auc@epoch@1",
                                 "robustness.pgd@epoch@1"])
def test_every_kind_of_metric_reference_is_accepted(tmp_path, ref):
    f = study_with(tmp_path, f"  - {{name: c, trend: {{metric: '{ref}', over: train.epochs, expect: increasing}}}}\n")
    assert load_study(f).spec.claims[0].trend.metric == ref


@pytest.mark.parametrize("claim,path,words", [
    ("{name: c, compare: {metric: robustness.pgd.acu, a: {seed: 0}, b: {seed: 1}, expect: less}}",
     "claims.0.compare.metric", "did you mean 'robustness.pgd.auc'"),
    ("{name: c, compare: {metric: robustness.fgsm@0.1, a: {seed: 0}, b: {seed: 1}, expect: less}}",
     "claims.0.compare.metric", "did you mean 'robustness.pgd"),
    ("{name: c, compare: {metric: robustness.pgd@eps, a: {seed: 0}, b: {seed: 1}, expect: less}}",
     "claims.0.compare.metric", "as a curve point"),
    ("{name: c, compare: {metric: accuracy, a: {train.method.nme: natural}, b: {seed: 1}, expect: less}}",
     "claims.0.compare.a.train.method.nme", "did you mean 'train.method.name'"),
    ("{name: c, compare: {metric: accuracy, a: {rule: c}, b: {rule: a}, expect: less}}",
     "claims.0.compare.a.rule", "no trial has rule = 'c' (expected one of: a, b)"),
    ("{name: c, compare: {metric: accuracy, a: {train.method.name: pgd_at}, b: {seed: 1}, expect: less}}",
     "claims.0.compare.a.train.method.name", "no trial has train.method.name = 'pgd_at'"),
    ("{name: c, compare: {metric: accuracy, versus: acuracy, expect: less}}",
     "claims.0.compare.versus", "did you mean 'accuracy'"),
    ("{name: c, trend: {metric: accuracy, over: rule, expect: increasing}}", "claims.0.trend.over",
     "a trend needs a numeric axis; 'rule' takes a, b"),
    ("{name: c, trend: {metric: accuracy, over: seed, within: {rules: a}, expect: increasing}}",
     "claims.0.trend.within.rules", "did you mean 'rule'"),
    ("{name: c, trend: {metric: accuracy, over: seed, expect: flat}}", "claims.0.trend", "needs a margin"),
    ("{name: c, compare: {metric: accuracy, a: {seed: 0}, b: {seed: 0}, expect: less}}", "claims.0.compare",
     "a and b select the same trials"),
    ("{name: c, compair: {metric: accuracy}}", "claims.0.compair", "did you mean 'compare'"),
    ("{name: c, compare: {metric: accuracy, a: {seed: 0}, b: {seed: 1}, expect: bigger}}",
     "claims.0.compare.expect", "'greater', 'less' or 'equal'"),
])
def test_bad_claims_are_refused_before_ray_with_their_key_path(tmp_path, capsys, claim, path, words):
    f = study_with(tmp_path, f"  - {claim}\n")
    assert main(["run", str(f), "--results", str(tmp_path / "r"), "--no-dashboard"]) == 2
    err = capsys.readouterr().err
    assert f"{f}: {path}" in err and words in err and "Traceback" not in err, err
    assert not (tmp_path / "r").exists()


def test_a_duplicate_name_is_refused(tmp_path):
    c = "  - {name: c, compare: {metric: accuracy, a: {seed: 0}, b: {seed: 1}, expect: less}}\n"
    with pytest.raises(StudyError, match="claims.1.name: line 17: claim 'c' is declared twice"):
        load_study(study_with(tmp_path, c + c))


def test_a_value_only_the_written_study_has_is_fine_under_a_variant(tmp_path):
    """--smoke pins train.epochs at 1 and --set seed=0 pins the seed: the claims still validate
    (their verdict then says the axis is not varied); a typo is refused under any variant."""
    f = study_with(tmp_path, "  - {name: c, compare: {metric: accuracy, a: {train.epochs: 1}, b: {train.epochs: 0}, "
                             "within: {seed: 1}, expect: greater}}\n")
    assert len(load_study(f, smoke=True, sets=["seed=0"]).trials) == 2
    bad = study_with(tmp_path, "  - {name: c, compare: {metric: accuracy, a: {train.epochs: 1}, b: {train.epochs: 3}, "
                               "expect: greater}}\n", "bad.yaml")
    with pytest.raises(StudyError, match="no trial has train.epochs = 3"):
        load_study(bad, smoke=True)


def test_study_json_records_the_claims_and_the_independent_axes(tmp_path):
    from raystudy.basecheck import plan_record
    f = study_with(tmp_path, "  - {name: c, compare: {metric: accuracy, a: {rule: a}, b: {rule: b}, "
                             "expect: equal, margin: 0.1}}\n")
    rec = json.loads(json.dumps(plan_record(load_study(f))))
    assert rec["axes"] == ["train.epochs", "seed", "rule"]     # the expr'd lr is derived
    assert rec["claims"] == [{"name": "c", "about": "", "compare": {
        "metric": "accuracy", "a": {"rule": "a"}, "b": {"rule": "b"}, "within": {}, "expect": "equal", "margin": 0.1}}]


# ------------------------------------------------------------------- CLI and report

ACC = {("nat", 0): 0.5, ("nat", 1): 0.6, ("nat", 2): 0.7, ("pgd", 0): 0.6, ("pgd", 1): 0.72, ("pgd", 2): 0.78}
CLAIMS = [{"name": "raises", "about": "PGD-AT raises accuracy here", "compare": {
              "metric": "accuracy", "a": {"train.method.name": "pgd"}, "b": {"train.method.name": "nat"},
              "expect": "greater"}},
          {"name": "lowers", "compare": {"metric": "accuracy", "a": {"train.method.name": "pgd"},
                                         "b": {"train.method.name": "nat"}, "expect": "less"}}]


def recorded(tmp_path, claims=CLAIMS) -> Path:
    rows = [(p, {"accuracy": ACC[(p["train.method.name"], p["seed"])]})
            for p in grid(**{"train.method.name": ["nat", "pgd"], "seed": [0, 1, 2]})]
    return write_results(tmp_path / "results" / "claimstudy", rows, claims=claims, axes=["train.method.name", "seed"])


def test_raystudy_claims_prints_writes_and_is_strict(tmp_path, capsys):
    out = recorded(tmp_path)
    assert main(["claims", str(out)]) == 0
    text = capsys.readouterr().out
    assert "✔ supported" in text and "✘ contradicted" in text and "+0.100 [+0.050, +0.150]" in text
    assert "3 seed pairs" in text and "claims.parquet" in text
    df = pd.read_parquet(out / "claims.parquet")
    assert df["verdict"].tolist() == ["supported", "contradicted"]
    assert main(["claims", str(out), "--strict"]) == 1
    assert "1 claim(s) contradicted: lowers" in capsys.readouterr().err
    only_true = recorded(tmp_path / "b", CLAIMS[:1])
    assert main(["claims", str(only_true), "--strict"]) == 0
    assert main(["claims", str(tmp_path / "nowhere")]) == 2


def test_a_study_without_claims(tmp_path, capsys):
    out = recorded(tmp_path, claims=[])
    assert main(["claims", str(out)]) == 0
    assert "declares no claims" in capsys.readouterr().out and not (out / "claims.parquet").exists()


def test_the_report_opens_with_the_verdict_table(tmp_path):
    from analysis.report import build_report
    out = recorded(tmp_path)
    page = build_report(out, png=False).read_text()
    assert page.index('<table id="claims">') < page.index('class="chart')
    assert page.count('<tr class="claim" data-verdict="supported">') == 1
    assert page.count('data-verdict="contradicted"') == 1 and 'title="PGD-AT raises accuracy here"' in page
    assert pd.read_csv(out / "report" / "claims.csv")["verdict"].tolist() == ["supported", "contradicted"]


# ------------------------------------------------------------------- docs generator

def _script():
    spec = importlib.util.spec_from_file_location("claims_tables", ROOT / "docs" / "experiments" / "claims_tables.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_experiments_verdict_tables_are_generated_from_claims_parquet(tmp_path, capsys):
    out = recorded(tmp_path)
    write_claims(out)
    doc = tmp_path / "EXPERIMENTS.md"
    doc.write_text("# x\n\nprose\n\n<!-- claims:claimstudy:begin -->\nold\n<!-- claims:claimstudy:end -->\n\n"
                   "<!-- claims:other:begin -->\nkept\n<!-- claims:other:end -->\n")
    tool = _script()
    assert tool.main(["--results", str(tmp_path / "results"), "--doc", str(doc)]) == 0
    text = doc.read_text()
    block = text.split("<!-- claims:claimstudy:begin -->\n")[1].split("<!-- claims:claimstudy:end -->")[0]
    assert "old" not in block and str(out / "claims.parquet") in block
    assert "| `raises` | `accuracy` | greater | **supported** | +0.100 [+0.050, +0.150] | 3 seed pairs | paired t |" in block
    assert "**contradicted**" in block and "kept" in text
    assert "no claims.parquet under" in capsys.readouterr().out
    tool.main(["--results", str(tmp_path / "results"), "--doc", str(doc)])
    assert doc.read_text() == text     # idempotent


def test_experiments_md_has_a_marker_for_every_paper_study():
    text = (ROOT / "docs" / "EXPERIMENTS.md").read_text()
    found = {m["study"] for m in _script().BLOCK.finditer(text)}
    assert found == {"cusp", "invariance_vs_robustness", "adversarial_vs_invariance", "sgd_hparams",
                     "svd_universal_gcnn", "sgr"}
    for name in found:
        assert load_study(ROOT / "studies" / f"{name}.yaml", expand_trials=False).spec.claims, name
