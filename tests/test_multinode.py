"""Trials spread over a (simulated) multi-node Ray cluster; all results reach the study's storage."""

import json
import subprocess
import sys
from pathlib import Path


def test_study_spreads_over_two_nodes(tmp_path):
    script = Path(__file__).with_name("multinode_run.py")
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "results")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1]
    got = json.loads(line)
    assert len(got["cluster_nodes"]) == 2
    assert got["rows"] == 4 and got["completed"] == 4
    # Both nodes ran trials (1 CPU each, 4 one-CPU trials), and every final checkpoint
    # landed in the study's storage.
    assert set(got["trial_nodes"]) == set(got["cluster_nodes"])
    assert got["checkpoints"] == 4
