"""Run a small study on a simulated two-node Ray cluster (used by test_multinode.py).

Started as its own process: a `ray.cluster_utils.Cluster` cannot share a process with
the test session's local Ray. Prints one JSON line with what the test checks.
"""

import json
import sys

import pandas as pd
import ray
from ray.cluster_utils import Cluster

from raystudy.runner import run_study
from raystudy.spec.load import load_document


def main(results: str) -> None:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="ERROR")
    try:
        study = load_document({
            "name": "multinode",
            "data": {"dataset": "synthetic", "train_size": 256, "test_size": 128},
            "model": {"arch": "stdcnn_mnist", "channels": [4, 4, 8, 8], "hidden": 16},
            "train": {"epochs": 2, "batch_size": 64, "optimizer": {"name": "sgd", "lr": 0.1}},
            "evaluate": ["accuracy"],
            "space": {"seed": {"grid": [0, 1, 2, 3]}},
            "resources": {"cpu": 1},
        })
        summary = run_study(study, results, address=cluster.address, dashboard=False, verbose=False)
        df = pd.read_parquet(summary.out / "trials.parquet")
        alive = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
        print(json.dumps({
            "completed": int((df["status"] == "completed").sum()),
            "rows": len(df),
            "trial_nodes": sorted(df["node_id"].dropna().unique().tolist()),
            "cluster_nodes": alive,
            "checkpoints": int(df["checkpoint"].notna().sum()) if "checkpoint" in df else 0,
        }))
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
