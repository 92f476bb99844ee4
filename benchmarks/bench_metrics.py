"""Images per second of each evaluation metric, and batched vs per-image DeepFool.

A StdCNN is trained for one epoch on embedded MNIST digits (a natural model, so
DeepFool needs its usual few steps), then each metric runs on `--n` test digits.
Rates count input images (an ε profile with k nonzero budgets attacks each image k
times; an invariance profile with k grid points classifies it k times). DeepFool is
timed twice on the same digits: raystudy's batched version and torchattacks' DeepFool,
which loops over images (on `--n-ref` digits, as it is slow); the script also prints
their mean L2 distances and success rates.

Run: .venv/bin/python benchmarks/bench_metrics.py [--n 500] [--n-ref 50] [--device auto] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, table  # noqa: E402


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def trained_model(data, device):
    from raystudy.models.stdcnn import StdCNN, StdCNNOptions
    torch.manual_seed(0)
    model = StdCNN(StdCNNOptions(), data.info).to(device)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    perm = torch.randperm(len(data.x_train), device=device)
    for i in range(0, len(perm), 64):
        idx = perm[i:i + 64]
        loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--n-ref", type=int, default=50)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    import torchattacks
    from raystudy.attacks import deepfool_batched
    from raystudy.data import load
    from raystudy.execute import pick_device
    from raystudy.metrics import EvalContext
    from raystudy.registry import METRICS
    from raystudy.spec.schema import DataSpec

    device = pick_device(a.device)
    data = load(DataSpec(dataset="mnist", source="embedded", train_size=2000, test_size=1000)).to(device)
    model = trained_model(data, device)
    ctx = EvalContext(model, data, device)
    n = a.n
    cases = [
        ("accuracy", {"n": n}, 1),
        ("robustness", {"attack": "fgsm", "eps": [0.1, 0.2, 0.3], "acc_at": [], "n": n}, 3),
        ("robustness", {"attack": "pgd", "eps": [0.1, 0.2, 0.3], "steps": 10, "acc_at": [], "n": n}, 3),
        ("robustness", {"attack": "pgd_l2", "eps": [1.0, 2.0], "steps": 10, "acc_at": [], "n": n}, 2),
        ("robustness", {"attack": "deepfool_batched", "eps": [0, 1, 2], "acc_at": [], "n": n}, 1),
        ("invariance", {"kind": "rotation", "n": n, "t180": False}, 19),
        ("invariance", {"kind": "rotation_translation", "n": n}, 11),
        ("boundary_distance", {"n": n}, 1),
    ]
    rows = []
    for name, opts, passes in cases:
        entry = METRICS.get(name)
        o = entry.schema.model_validate(opts)
        sync(device)
        t0 = time.perf_counter()
        entry.obj(ctx, o)
        sync(device)
        dt = time.perf_counter() - t0
        label = name + (f" {opts.get('attack') or opts.get('kind')}" if name in ("robustness", "invariance") else "")
        rows.append({"metric": label, "images": n, "passes": passes, "seconds": f"{dt:.2f}",
                     "images/s": f"{n / dt:.0f}", "image-passes/s": f"{n * passes / dt:.0f}"})

    x, y = ctx.subset("test", a.n_ref, 0)

    def summary(adv, fooled):
        d = (adv - x).flatten(1).norm(dim=1)
        return d[fooled].mean().item(), fooled.float().mean().item()

    sync(device)
    t0 = time.perf_counter()
    res = deepfool_batched(model, x, y)
    sync(device)
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    adv_ref = torchattacks.DeepFool(model, steps=50, overshoot=0.02)(x, y)
    sync(device)
    t_ref = time.perf_counter() - t0
    with torch.no_grad():
        fooled_ref = model(adv_ref).argmax(1) != y
        correct = model(x).argmax(1) == y
    l2_ours, _ = summary(res.adv, res.fooled & correct)
    l2_ref, _ = summary(adv_ref, fooled_ref & correct)
    cols = ["metric", "images", "passes", "seconds", "images/s", "image-passes/s"]
    print(machine(), f"| {device} | {torch.get_num_threads()} thread(s)")
    print(table(rows, cols))
    print()
    print(table([
        {"deepfool": "batched (raystudy)", "images": a.n_ref, "seconds": f"{t_ours:.2f}",
         "images/s": f"{a.n_ref / t_ours:.1f}", "mean L2": f"{l2_ours:.3f}",
         "success": f"{(res.fooled & correct).sum().item() / correct.sum().item():.2f}"},
        {"deepfool": "per-image (torchattacks)", "images": a.n_ref, "seconds": f"{t_ref:.2f}",
         "images/s": f"{a.n_ref / t_ref:.1f}", "mean L2": f"{l2_ref:.3f}",
         "success": f"{(fooled_ref & correct).sum().item() / correct.sum().item():.2f}"},
    ], ["deepfool", "images", "seconds", "images/s", "mean L2", "success"]))
    print(f"speed-up: {t_ref / t_ours:.1f}x")


if __name__ == "__main__":
    main()
