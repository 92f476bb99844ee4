"""The results folder has one owner (raystudy.layout) and one checkpoint rule; a study's plan
is computed once per load. No Ray here: every folder is built by hand, as runs leave them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

from raystudy import warmstart
from raystudy.basecheck import check_base, plan_record
from raystudy.collect import read_trial_dir
from raystudy.layout import MODEL_FILE, PLAN, STATE_FILE, TRIALS, Layout, newest_checkpoint
from raystudy.results import ResultStore, write_json_atomic
from raystudy.spec import load_study

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "studies" / "quickstart.yaml"


def ckpt(out: Path, exp: str, tid: str, n: int, marker: str, mtime: float | None = None) -> Path:
    d = out / exp / tid / f"checkpoint_{n:06d}"
    d.mkdir(parents=True, exist_ok=True)
    (d / marker).write_text(f"{exp}/{n}")
    if mtime is not None:
        os.utime(d / marker, (mtime, mtime))
    return d


def test_the_checkpoint_rule_newest_experiment_then_highest_number_never_file_times(tmp_path):
    out = tmp_path / "study"
    # The oldest experiment holds the highest numbers and the newest file times: neither counts.
    ckpt(out, "tune-20250101-090000", "t", 7, MODEL_FILE, mtime=4e9)
    ckpt(out, "tune-20250101-090000", "t", 8, STATE_FILE, mtime=4e9)
    # Two experiments started in the same second: -10 is newer than -2 (not a string sort).
    ckpt(out, "tune-20250102-090000-2", "t", 1, MODEL_FILE)
    newest = ckpt(out, "tune-20250102-090000-10", "t", 1, MODEL_FILE)
    # Inside one trial folder: the highest number holding the file, numbers compared as numbers.
    ckpt(out, "tune-20250102-090000-10", "t", 3, STATE_FILE)
    resume = ckpt(out, "tune-20250102-090000-10", "t", 10, STATE_FILE, mtime=1)
    ckpt(out, "tune-20250102-090000-10", "t", 9, STATE_FILE)
    layout = Layout(out)
    assert [p.name for p in layout.experiments()] == [
        "tune-20250102-090000-10", "tune-20250102-090000-2", "tune-20250101-090000"]
    assert layout.final_weights("t") == newest.resolve() / MODEL_FILE
    assert layout.resume_points(["t", "absent"]) == {"t": str(resume.resolve())}
    # A folder already named for the trial (the `checkpoint` column) wins when it holds the file,
    # given as the folder, as the file, or relative to the results folder ...
    named = ckpt(out, "elsewhere", "t", 0, MODEL_FILE)
    assert layout.final_weights("t", named=named) == named.resolve() / MODEL_FILE
    assert layout.final_weights("t", named=named / MODEL_FILE) == named.resolve() / MODEL_FILE
    assert layout.final_weights("t", named="elsewhere/t/checkpoint_000000") == named.resolve() / MODEL_FILE
    # ... and falls back to the rule when it does not (moved, or a NaN cell of the table).
    assert layout.final_weights("t", named=tmp_path / "gone") == newest.resolve() / MODEL_FILE
    assert layout.final_weights("t", named=float("nan")) == newest.resolve() / MODEL_FILE
    assert layout.final_weights("other") is None
    assert newest_checkpoint(out / "tune-20250102-090000-10" / "t", STATE_FILE) == resume


def test_every_reader_uses_the_one_rule(tmp_path):
    """Warm starts, transfer attacks and `raystudy collect` find the same final weights."""
    out = tmp_path / "results" / "src"
    ckpt(out, "tune-20250101-090000", "aaa", 5, MODEL_FILE, mtime=4e9)
    final = ckpt(out, "tune-20250102-090000", "aaa", 2, MODEL_FILE)
    ckpt(out, "tune-20250102-090000", "aaa", 1, MODEL_FILE)
    write_json_atomic({"name": "src", "trials": [{"trial_id": "aaa", "params": {}, "config": {
        "model": {"arch": "stdcnn_mnist"}}}]}, out / PLAN)
    pd.DataFrame([{"trial_id": "aaa", "status": "completed", "checkpoint": None}]).to_parquet(out / TRIALS)
    want = final.resolve() / MODEL_FILE
    assert Layout(out).final_weights("aaa") == want
    assert warmstart.checkpoint_file("aaa", out) == want
    assert warmstart.resolve({"study": "src", "trial_id": "aaa"}, root=tmp_path / "results") == want
    tdir = out / "tune-20250102-090000" / "aaa"
    (tdir / "params.json").write_text('{"trial": {"trial_id": "aaa", "params": {}, "config": {}}}')
    (tdir / "result.json").write_text('{"final": true, "accuracy": 0.5}\n')
    assert read_trial_dir(tdir)["checkpoint"] == str(final.resolve())


def test_the_plan_is_computed_once_per_load(monkeypatch, tmp_path):
    import raystudy.spec.plan as plan_mod
    calls: list[str] = []

    class Counting(plan_mod.TrialValidator):
        def __call__(self, config, sections=()):
            calls.append(self.file)
            return super().__call__(config, sections)

    composed: list[int] = []
    real_node = yaml.SafeLoader.get_single_node

    def compose_once(self):
        composed.append(1)
        return real_node(self)

    monkeypatch.setattr(plan_mod, "TrialValidator", Counting)
    monkeypatch.setattr(yaml.SafeLoader, "get_single_node", compose_once)
    study = load_study(QUICKSTART)
    n = len(study.trials)
    assert n == 4 and len(calls) == n and len(composed) == 1
    # Everything the driver asks before Ray starts reuses the plan: no trial is validated again.
    assert study.plan is study.plan and set(study.plan.parsed) == {t.trial_id for t in study.trials}
    record = plan_record(study)
    assert record["base_fingerprint"] == study.plan.fingerprint and record["varied"] == sorted(study.plan.varied)
    out = tmp_path / "quickstart"
    out.mkdir()
    write_json_atomic(record, out / PLAN)
    ResultStore(out).record(study.trials[0].to_ray(), "completed", {"accuracy": 0.5})
    assert check_base(study, out, force_new=False) is None
    assert study.plan.parsed[study.trials[0].trial_id].cfg.data.dataset == "mnist"
    assert len(calls) == n and len(composed) == 1


def test_validate_and_plan_never_import_ray():
    code = ("import sys; from raystudy.cli import main; "
            f"assert main(['validate', {str(QUICKSTART)!r}]) == 0; "
            f"assert main(['plan', {str(QUICKSTART)!r}]) == 0; "
            "assert 'ray' not in sys.modules, 'ray was imported'")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.returncode == 0, p.stderr[-2000:]


def test_spec_imports_only_errors_and_registry():
    """The spec layer is a leaf: sections owned elsewhere (report:, after:) register validators."""
    import ast
    allowed = {"raystudy.errors", "raystudy.registry"}
    for src in (ROOT / "raystudy" / "spec").glob("*.py"):
        for node in ast.walk(ast.parse(src.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level >= 2:
                target = "raystudy." + (node.module or "")
                assert target in allowed, f"{src.name} imports {target}"
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                assert not any(n.startswith(("raystudy", "analysis")) for n in names), f"{src.name}: {names}"
