"""The notebooks under analysis/ run headless (nbclient) against results written in the test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def quickstart_like_results(out: Path) -> Path:
    """Tables in the quickstart's shape (rotation 0/60 x seeds 0/1), written by the real ResultStore."""
    from raystudy.results import PLAN, ResultStore, write_json_atomic
    trials = []
    for rot in (0, 60):
        for seed in (0, 1):
            trials.append({"trial_id": f"r{rot}s{seed}", "params": {"train.augment.rotation": rot, "seed": seed},
                           "config": {"seed": seed, "model": {"arch": "stdcnn_mnist"}, "data": {"dataset": "mnist"},
                                      "train": {"method": {"name": "natural"}, "augment": {"rotation": rot}}}})
    report = [{"chart": "bar", "x": "train.augment.rotation", "y": "accuracy"},
              {"chart": "epochs", "y": "val_accuracy", "color": "train.augment.rotation"}]
    write_json_atomic({"name": "quickstart", "report": report, "trials": trials}, out / PLAN)
    store = ResultStore(out)
    for t in trials:
        acc = 0.9 - 0.001 * t["params"]["train.augment.rotation"] + 0.01 * t["params"]["seed"]
        store.record(t, "completed", {"accuracy": acc, "accuracy.val": acc - 0.02, "final_loss": 0.3},
                     epochs=[{"epoch": e, "val_accuracy": acc - 0.1 / e, "loss": 1 / e} for e in (1, 2)])
    return out


@pytest.mark.parametrize("name", ["quickstart.ipynb"])
def test_notebook_runs_headless(tmp_path, name, monkeypatch):
    import nbformat
    from nbclient import NotebookClient
    out = quickstart_like_results(tmp_path / "quickstart")
    monkeypatch.setenv("RAYSTUDY_RESULTS_DIR", str(out))
    # The kernel must import this checkout's analysis package, as a user's notebook would from the repo.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    nb = nbformat.read(ROOT / "analysis" / name, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT / "analysis")}},
                   extra_arguments=[]).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "study 'quickstart': {'completed': 4}" in text and "2 declared charts" in text
    svgs = [o["data"]["image/svg+xml"] for o in outputs if o.output_type in ("display_data", "execute_result")
            and "image/svg+xml" in o.get("data", {})]
    assert len(svgs) == 3  # bar, epochs, the declared charts
    assert all("<svg" in s and "accuracy" in s for s in svgs)
    # The aggregate cell shows the seed means: rotation 60 -> mean of 0.84 and 0.85.
    html = "".join(o["data"].get("text/html", "") for o in outputs if o.output_type == "execute_result")
    assert "0.845" in html
