"""`tracking:` (TensorBoard, MLflow, W&B offline) and Ray's own APIs on a finished study.

Every number is read back from the tracker's own files (TensorBoard event files, the MLflow
file store through mlflow.search_runs, the W&B offline run file) and compared with
trials.parquet; Ray's ExperimentAnalysis and Tuner.restore read the experiment folder the
CLI printed.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pandas as pd
import pytest

from raystudy.cli import main
from raystudy.tracking import mlflow_name, trial_params

STUDY = """
name: trk
data: {{dataset: synthetic, train_size: 128, test_size: 64}}
model: {{arch: stdcnn_mnist, channels: [4, 4, 8, 8], hidden: 16}}
train:
  epochs: 2
  batch_size: 16
  optimizer: {{name: adam, lr: 0.01}}
space:
  train.optimizer.lr: {{grid: [0.01, 0.003]}}
evaluate:
  - accuracy
  - robustness: {{attack: fgsm, eps: [0, 0.1], n: 32}}
resources: {{cpu: 1}}
tune: {{max_concurrent: 1}}
tracking:
  tensorboard: true
  mlflow: {{tracking_uri: "{mlruns}", experiment_name: trk-test}}
  wandb: {{mode: offline, project: trk}}
"""


def tb_scalars(trial_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Scalars of the TensorBoard event files in a folder (TFRecord framing: length, CRC, data, CRC)."""
    from tensorboardX.proto import event_pb2
    out: dict[str, list[tuple[int, float]]] = {}
    for f in sorted(trial_dir.glob("events.out.tfevents.*")):
        data, i = f.read_bytes(), 0
        while i + 12 <= len(data):
            n = struct.unpack("<Q", data[i:i + 8])[0]
            ev = event_pb2.Event()
            ev.ParseFromString(data[i + 12:i + 12 + n])
            i += 12 + n + 4
            for v in ev.summary.value:
                if v.HasField("simple_value"):
                    out.setdefault(v.tag, []).append((ev.step, v.simple_value))
    return out


def wandb_history(run_file: Path) -> list[dict]:
    """The history rows of a W&B offline run file (records in 32 KiB blocks after a 7-byte header,
    each record framed by CRC, length and type; type 1 = whole, 2/3/4 = first/middle/last part)."""
    from wandb.proto import wandb_internal_pb2 as pb
    data = run_file.read_bytes()
    assert data[:4] == b":W&B"
    pos, buf, records = 7, b"", []
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            records.append(buf)
            buf = b""
        elif kind == 0:
            break
    rows = []
    for raw in records:
        rec = pb.Record()
        rec.ParseFromString(raw)
        if rec.WhichOneof("record_type") == "history":
            rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item})
    return rows


def test_mlflow_names_keep_their_meaning():
    assert mlflow_name("robustness.pgd.acc@8/255") == "robustness.pgd.acc:8/255"
    assert mlflow_name("hessian.top1") == "hessian.top1"
    assert re.fullmatch(r"[\w.\- :/]+", mlflow_name("a%b(c)"))
    p = trial_params({"trial_id": "abc", "params": {"lr_rule": "fixed"},
                      "config": {"train": {"optimizer": {"lr": 0.1}}, "evaluate": ["accuracy"]}})
    assert p == {"trial_id": "abc", "train.optimizer.lr": "0.1", "evaluate": '["accuracy"]', "lr_rule": "fixed"}


@pytest.mark.slow   # real Ray trials, a W&B process per trial
def test_trackers_and_rays_own_apis_see_the_same_numbers(ray_local, tmp_path, capsys, monkeypatch):
    mlruns = (tmp_path / "mlruns").as_uri()
    f = tmp_path / "trk.yaml"
    f.write_text(STUDY.format(mlruns=mlruns))
    res = tmp_path / "res"
    monkeypatch.setenv("WANDB_SILENT", "true")
    assert main(["run", str(f), "--results", str(res), "--no-dashboard"]) == 0
    printed = capsys.readouterr().out
    exp = Path(re.search(r"Ray Tune experiment \(.*\): (\S+)", printed).group(1))
    assert exp.parent == res / "trk" and exp.name.startswith("tune-")
    trials = pd.read_parquet(res / "trk" / "trials.parquet").set_index("trial_id")
    curves = pd.read_parquet(res / "trk" / "curves.parquet")
    assert len(trials) == 2 and (trials["status"] == "completed").all()

    # MLflow: one run per trial, named by trial id; final metrics, epochs and curves.
    import mlflow
    mlflow.set_tracking_uri(mlruns)
    runs = mlflow.search_runs(experiment_names=["trk-test"]).set_index("tags.raystudy.trial_id")
    assert set(runs.index) == set(trials.index)
    for tid, row in trials.iterrows():
        run = runs.loc[tid]
        assert run["metrics.accuracy"] == pytest.approx(row["accuracy"])
        assert run["metrics.robustness.fgsm.acc:8/255"] == pytest.approx(row["robustness.fgsm.acc@8/255"])
        assert float(run["params.train.optimizer.lr"]) == row["train.optimizer.lr"]
        history = mlflow.MlflowClient().get_metric_history(run["run_id"], "val_accuracy")
        assert sorted(m.step for m in history) == [1, 2]
        art = Path(mlflow.artifacts.download_artifacts(run_id=run["run_id"], artifact_path="curves.csv",
                                                       dst_path=str(tmp_path / "dl" / tid)))
        got = pd.read_csv(art)
        want = curves[curves["trial_id"] == tid]
        assert sorted(got["accuracy"]) == pytest.approx(sorted(want["accuracy"]))

    # TensorBoard: Tune's event files in each trial folder, plus the curves.
    for tid, row in trials.iterrows():
        sc = tb_scalars(exp / tid)
        assert sc["ray/tune/accuracy"][-1][1] == pytest.approx(row["accuracy"], rel=1e-6)
        assert [s for s, _ in sc["ray/tune/val_accuracy"]] == [1, 2]
        fgsm = curves[(curves["trial_id"] == tid) & (curves["metric"] == "robustness.fgsm")].sort_values("x")
        assert [v for _, v in sc["curves/robustness.fgsm/accuracy"]] == pytest.approx(list(fgsm["accuracy"]), rel=1e-6)

    # W&B (offline): a run per trial in its folder; the final accuracy and the curves table.
    for tid, row in trials.iterrows():
        run_files = list((exp / tid).glob("wandb/offline-run-*/run-*.wandb"))
        assert len(run_files) == 1, list((exp / tid).iterdir())
        hist = wandb_history(run_files[0])
        finals = [h for h in hist if "accuracy" in h]
        assert finals and finals[-1]["accuracy"] == pytest.approx(row["accuracy"])
        assert list(run_files[0].parent.glob("files/media/table/curves_*.table.json"))

    # Ray's own APIs on the printed experiment folder.
    from ray import tune
    from ray.tune import ExperimentAnalysis
    from raystudy.trainable import trainable
    ea = ExperimentAnalysis(str(exp))
    best = ea.get_best_trial("accuracy", "max")
    assert best.config["trial"]["trial_id"] == trials["accuracy"].idxmax()
    for t in ea.trials:
        ckpt = ea.get_best_checkpoint(t, "accuracy", "max")   # the final metrics sit with the final weights
        tid = t.config["trial"]["trial_id"]
        # trials.parquet stores it relative to the results folder (a moved folder keeps it).
        assert Path(ckpt.path).resolve() == (exp.parent / trials.loc[tid, "checkpoint"]).resolve()
        assert (Path(ckpt.path) / "model.pt").is_file()
    assert tune.Tuner.can_restore(str(exp))
    restored = tune.Tuner.restore(str(exp), trainable=tune.with_parameters(trainable, bundles={})).get_results()
    assert sorted(r.metrics["accuracy"] for r in restored) == pytest.approx(sorted(trials["accuracy"]))
    assert main(["status", str(res / "trk")]) == 0
    assert str(exp) in capsys.readouterr().out
