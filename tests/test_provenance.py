"""Provenance: which code and which machine made each result, and what a re-run does with
results that other code made (reuse loudly, --rerun-changed-code, --strict-code).

The code identity is tested on real git repositories in temporary folders; the re-run
policy through run_study and the CLI, and once end to end with a copy of raystudy committed
into a temporary repository and run through Ray in a subprocess (slow).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pandas as pd
import pytest
import torch

from raystudy import __version__
from raystudy.cli import main
from raystudy.errors import StudyError
from raystudy.provenance import NOT_RECORDED, code_record, environment, source_hash
from raystudy.results import PLAN, TRIALS, ResultStore
from raystudy.runner import run_study
from raystudy.spec import load_study

ROOT = Path(__file__).resolve().parents[1]
GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.org"}


def git(repo: Path, *args: str) -> str:
    out = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, env={**os.environ, **GIT_ENV})
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def make_repo(path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    git(path, "init", "-q")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "first")
    return path


def test_code_record_follows_the_package_in_a_real_git_repo(tmp_path):
    repo = make_repo(tmp_path / "repo", {"pkg/__init__.py": "", "pkg/metric.py": "X = 1\n", "README.md": "a\n"})
    pkg = repo / "pkg"
    first = code_record(pkg, version="1.0")
    assert first["code.commit"] == git(repo, "rev-parse", "HEAD")
    assert (first["code.dirty"], first["code.diff"], first["code.version"]) == (False, None, "1.0")

    # An uncommitted edit of the package: dirty, with a diff hash, and other code.
    (pkg / "metric.py").write_text("X = 2\n")
    edited = code_record(pkg, version="1.0")
    assert edited["code.dirty"] and edited["code.diff"] and edited["code.id"] != first["code.id"]
    assert edited["code.commit"] == first["code.commit"]
    (pkg / "metric.py").write_text("X = 3\n")
    other_edit = code_record(pkg, version="1.0")
    assert other_edit["code.diff"] != edited["code.diff"] and other_edit["code.id"] != edited["code.id"]
    git(repo, "checkout", "--", "pkg/metric.py")
    assert code_record(pkg, version="1.0") == first

    # An untracked module in the package is part of the code too.
    (pkg / "new.py").write_text("Y = 1\n")
    untracked = code_record(pkg, version="1.0")
    assert untracked["code.dirty"] and untracked["code.id"] != first["code.id"]
    (pkg / "new.py").unlink()

    # Edits outside the package (docs, studies) change no result: same code, not dirty.
    (repo / "README.md").write_text("b\n")
    assert code_record(pkg, version="1.0") == first
    git(repo, "commit", "-q", "-am", "docs")
    docs = code_record(pkg, version="1.0")
    assert docs["code.id"] == first["code.id"] and docs["code.commit"] != first["code.commit"]

    # A commit that changes the package is other code; so is another raystudy version.
    (pkg / "metric.py").write_text("X = 2\n")
    git(repo, "commit", "-q", "-am", "fix the metric")
    fixed = code_record(pkg, version="1.0")
    assert fixed["code.id"] != first["code.id"] and not fixed["code.dirty"]
    assert fixed["code.id"] == edited["code.id"]    # the content decides, not how it got there
    assert code_record(pkg, version="1.1")["code.id"] != fixed["code.id"]

    # Outside git (an installed copy): no commit, the same identity for the same files.
    plain = tmp_path / "plain" / "pkg"
    shutil.copytree(pkg, plain)
    outside = code_record(plain, version="1.0")
    assert outside["code.commit"] is None and outside["code.dirty"] is None
    assert outside["code.id"] == fixed["code.id"]
    assert source_hash(plain) == source_hash(pkg)


def test_environment_records_versions_device_and_seed():
    env = environment(torch.device("cpu"), 3)
    assert env["env.torch"] == metadata.version("torch") and env["env.ray"] == metadata.version("ray")
    assert env["env.numpy"] == metadata.version("numpy") and env["env.escnn"] == metadata.version("escnn")
    assert env["env.python"] == ".".join(map(str, sys.version_info[:3]))
    assert (env["env.device"], env["env.gpu"], env["env.cuda"], env["env.seed"]) == ("cpu", None, None, 3)
    assert env["env.host"]
    # The worker puts it into the trial's final result.
    from raystudy.data import load
    from raystudy.execute import run_trial
    from raystudy.spec.schema import DataSpec
    cfg = {"seed": 5, "data": {"dataset": "synthetic", "train_size": 64, "test_size": 32},
           "model": {"arch": "stdcnn_mnist", "channels": [4, 4, 8, 8], "hidden": 8},
           "train": {"epochs": 1, "batch_size": 32}, "evaluate": ["accuracy"]}
    final = run_trial({"trial_id": "t", "params": {}, "config": cfg}, load(DataSpec.model_validate(cfg["data"])))
    assert final["env.seed"] == 5 and final["env.device"] == "cpu" and final["env.torch"] == env["env.torch"]


STUDY = """
name: prov
data: {dataset: synthetic, train_size: 128, test_size: 64}
model: {arch: stdcnn_mnist, channels: [4, 4, 8, 8], hidden: 16}
train: {epochs: 1, batch_size: 32}
space:
  seed: {grid: [0, 1]}
evaluate: [accuracy]
resources: {cpu: 1}
"""


def record_made_by(out: Path, study, code: dict) -> None:
    """Rows as a run of `study` by `code` leaves them (the trial carries the driver's code
    record; the worker's result its environment)."""
    store = ResultStore(out)
    for t in study.trials:
        store.record({**t.to_ray(), "code": code}, "completed",
                     {"accuracy": 0.5, **environment(torch.device("cpu"), t.config["seed"])})


def test_changed_code_is_reported_reused_or_refused(tmp_path, capsys):
    repo = make_repo(tmp_path / "repo", {"pkg/__init__.py": "", "pkg/metric.py": "X = 1\n"})
    old = code_record(repo / "pkg")
    f = tmp_path / "prov.yaml"
    f.write_text(STUDY)
    study = load_study(f)
    res = tmp_path / "res"
    out = res / "prov"
    out.mkdir(parents=True)
    record_made_by(out, study, old)

    # The same code: every trial is reused, nothing said about code.
    s = run_study(study, res, dashboard=False, verbose=False, code=old)
    assert (s.skipped, s.completed) == (2, 2)
    assert "other code" not in capsys.readouterr().out

    # A new commit of the package: reported (with the old commit), reused by default.
    (repo / "pkg" / "metric.py").write_text("X = 2\n")
    git(repo, "commit", "-q", "-am", "fix")
    new = code_record(repo / "pkg")
    s = run_study(study, res, dashboard=False, verbose=False, code=new)
    printed = capsys.readouterr().out
    assert "2 finished trials were made by other code" in printed
    assert f"commit {old['code.commit'][:12]}" in printed and "REUSED" in printed
    assert (s.skipped, s.completed) == (2, 2)
    runs = json.loads((out / PLAN).read_text())["runs"]
    assert [r["code.id"] for r in runs] == [old["code.id"], new["code.id"]]
    assert runs[-1]["env.torch"] == metadata.version("torch") and runs[-1]["to_run"] == 0

    # --strict-code refuses, before Ray, naming the code that made them.
    with pytest.raises(StudyError) as e:
        run_study(study, res, dashboard=False, verbose=False, code=new, code_policy="strict")
    assert "--strict-code" in str(e.value) and old["code.commit"][:12] in str(e.value)
    # ... and through the CLI (this checkout is other code than the temporary package): exit 2.
    rc = main(["run", str(f), "--results", str(res), "--no-dashboard", "--strict-code"])
    err = capsys.readouterr().err
    assert rc == 2 and "2 finished trials were made by other code" in err and "Traceback" not in err

    # Rows recorded before provenance count as other code, and say so.
    table = pd.read_parquet(out / TRIALS).drop(columns=[c for c in pd.read_parquet(out / TRIALS)
                                                        if c.startswith("code.")])
    table.to_parquet(out / TRIALS)
    s = run_study(study, res, dashboard=False, verbose=False, code=new)
    assert NOT_RECORDED in capsys.readouterr().out


def test_status_shows_the_versions_present(tmp_path, capsys):
    repo = make_repo(tmp_path / "repo", {"pkg/__init__.py": ""})
    f = tmp_path / "prov.yaml"
    f.write_text(STUDY)
    study = load_study(f)
    out = tmp_path / "res" / "prov"
    out.mkdir(parents=True)
    record_made_by(out, study, code_record(repo / "pkg"))
    run_study(study, tmp_path / "res", dashboard=False, verbose=False, code=code_record(repo / "pkg"))
    assert main(["status", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"2 trials: commit {git(repo, 'rev-parse', 'HEAD')[:12]}" in printed
    assert f"torch: {metadata.version('torch')}" in printed and f"raystudy {__version__}" in printed
    assert "this checkout:" in printed
    # The report treats provenance as bookkeeping, never as a metric.
    from analysis.load import load
    metrics = load(out).metric_columns
    assert "accuracy" in metrics and not [m for m in metrics if m.startswith(("code.", "env."))]


@pytest.mark.slow   # two real Ray runs, each in its own process
def test_code_change_end_to_end_with_a_committed_copy_of_raystudy(tmp_path):
    """raystudy itself copied into a fresh git repository and run from there: a commit that
    changes a metric is reported on the next run, refused with --strict-code and re-run with
    --rerun-changed-code; the trial's row then carries the new commit."""
    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "raystudy", repo / "raystudy", ignore=shutil.ignore_patterns("__pycache__"))
    make_repo(repo, {"README.md": "copy\n"})
    study = tmp_path / "prov.yaml"
    study.write_text(STUDY.replace("[0, 1]", "[0]"))
    env = {**os.environ, "PYTHONPATH": str(repo), "RAY_DEDUP_LOGS": "0"}
    env.pop("RAY_ADDRESS", None)

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "raystudy.cli", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)

    run = ("run", str(study), "--results", str(tmp_path / "res"), "--no-dashboard")
    first = cli(*run)
    assert first.returncode == 0, first.stderr[-3000:]
    out = tmp_path / "res" / "prov"
    row = pd.read_parquet(out / TRIALS).iloc[0]
    old_commit = git(repo, "rev-parse", "HEAD")
    assert row["code.commit"] == old_commit and not row["code.dirty"]
    assert row["env.seed"] == 0 and row["env.torch"] == metadata.version("torch")

    again = cli(*run)
    assert again.returncode == 0 and "other code" not in again.stdout + again.stderr

    metric = repo / "raystudy" / "metrics" / "accuracy.py"
    metric.write_text(metric.read_text() + "\n# a fix\n")
    git(repo, "commit", "-q", "-am", "fix accuracy")
    reused = cli(*run)
    assert reused.returncode == 0
    assert f"1 finished trial was made by other code" in reused.stdout and old_commit[:12] in reused.stdout
    strict = cli(*run, "--strict-code")
    assert strict.returncode == 2 and "--strict-code" in strict.stderr and "Traceback" not in strict.stderr
    rerun = cli(*run, "--rerun-changed-code")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    row = pd.read_parquet(out / TRIALS).iloc[0]
    assert row["code.commit"] == git(repo, "rev-parse", "HEAD") and row["runs"] == 2
    assert row["epochs_run"] == 1 and row.get("resumed_from_epoch", 0) == 0
    status = cli("status", str(out))
    assert "1 trial: commit " + row["code.commit"][:12] in status.stdout
