"""Images per second of each evaluation metric, and DeepFool against Foolbox and torchattacks.

A StdCNN is trained for one epoch on embedded MNIST digits (a natural model, so
DeepFool needs its usual few steps), then each metric runs on `--n` test digits.
Rates count input images (an ε profile with k nonzero budgets attacks each image k
times; an invariance profile with k grid points classifies it k times).

DeepFool part (`--n-df` test digits, each timing the median of `--repeats` runs): raystudy's
batched DeepFool under both box rules ("mask": drop gradient components at the [0, 1]
edge; "clip": accumulate the step, then clip, as Foolbox does) and without the box, next
to Foolbox 3.3.4's L2DeepFoolAttack (with and without the box) and torchattacks'
per-image DeepFool (on the first `--n-ref` digits only: it is slow). Every implementation
runs with 50 steps, overshoot 0.02 and, where it has the option, 10 candidate classes, on
the same model with its parameters frozen (input gradients only, which spares the
references the parameter gradients they would otherwise compute). Distances are L2 norms
of adv - x over correctly classified digits; a pair of implementations is compared on the
digits both fool (image by image: |d_a / d_b - 1|).

Foolbox is a benchmark-only dependency: `pip install -e ".[bench]"` (or `make bench`).

Run: .venv/bin/python benchmarks/bench_metrics.py [--n 500] [--n-df 300] [--n-ref 30]
     [--repeats 3] [--only deepfool] [--device auto] [--threads 1] [--fgsm-model]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, table  # noqa: E402

DF = {"steps": 50, "overshoot": 0.02, "candidates": 10}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def trained_model(data, device, fgsm: bool = False):
    """One epoch of Adam; with `fgsm`, two epochs on clean + FGSM (ε 0.1) digits, a second
    decision geometry for the DeepFool comparison (the candidate tracking must hold there too)."""
    from raystudy.models.stdcnn import StdCNN, StdCNNOptions
    torch.manual_seed(1 if fgsm else 0)
    model = StdCNN(StdCNNOptions(), data.info).to(device)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    for _ in range(2 if fgsm else 1):
        perm = torch.randperm(len(data.x_train), device=device)
        for i in range(0, len(perm), 64):
            idx = perm[i:i + 64]
            xb, yb = data.x_train[idx], data.y_train[idx]
            if fgsm:
                xg = xb.clone().requires_grad_(True)
                g, = torch.autograd.grad(F.cross_entropy(model(xg), yb), xg)
                xb, yb = torch.cat([xb, (xb + 0.1 * g.sign()).clamp(0, 1)]), torch.cat([yb, yb])
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def metric_rows(ctx, n: int, device) -> list[dict]:
    from raystudy.registry import METRICS
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
    return rows


# ------------------------------------------------------------------ DeepFool implementations

def ours(box: str | None, **kw):
    """raystudy's batched DeepFool with its defaults (track 3, band 2); box None = without the
    [0, 1] box; `kw` overrides (track=None: every candidate at every step, the original)."""
    from raystudy.attacks import deepfool_batched

    rule = {"clamp": False} if box is None else {"box": box}

    def run(model, x, y):
        res = deepfool_batched(model, x, y, **kw, **rule, **DF)
        return res.adv, res.fooled, res.steps
    return run


def foolbox(boxed: bool):
    """Foolbox's L2DeepFoolAttack; unboxed = bounds far outside [0, 1] (its clip never binds)."""
    import foolbox as fb

    from raystudy.attacks import input_grad_only

    def run(model, x, y):
        with input_grad_only(model):
            fmodel = fb.PyTorchModel(model, bounds=(0, 1) if boxed else (-1e4, 1e4), device=x.device)
            attack = fb.attacks.L2DeepFoolAttack(**DF)
            adv, _, success = attack(fmodel, x, y, epsilons=None)
        return adv.detach(), success, None
    return run


def torchattacks_df(model, x, y):
    import torchattacks

    from raystudy.attacks import input_grad_only
    with input_grad_only(model):
        adv = torchattacks.DeepFool(model, steps=DF["steps"], overshoot=DF["overshoot"])(x, y)
        with torch.no_grad():
            fooled = model(adv).argmax(1) != y
    return adv, fooled, None


def timed(fn, model, x, y, device):
    sync(device)
    t0 = time.perf_counter()
    adv, fooled, steps = fn(model, x, y)
    sync(device)
    return adv, fooled, steps, time.perf_counter() - t0


def agreement(a: dict, b: dict, correct: torch.Tensor) -> dict:
    """Image-by-image: relative distance difference on the digits both fool."""
    both = a["fooled"] & b["fooled"] & correct
    rel = (a["dist"][both] / b["dist"][both].clamp_min(1e-12) - 1).abs()
    same_class = (a["pred"][both] == b["pred"][both]).float().mean().item() if both.any() else float("nan")
    return {"pair": f"{a['name']} vs {b['name']}", "both fooled": int(both.sum()),
            "mean L2 ratio": f"{a['dist'][both].mean().item() / b['dist'][both].mean().item():.4f}",
            "median |rel diff|": f"{rel.median().item():.2e}", "max |rel diff|": f"{rel.max().item():.2e}",
            "within 1%": f"{(rel <= 0.01).float().mean().item():.3f}", "same adv class": f"{same_class:.3f}"}


def run_deepfool(model, x, y, device, repeats: int, n_ref: int) -> tuple[list, list, dict]:
    """Every implementation once per round, rounds repeated: on a shared machine whose load
    drifts, interleaving keeps the ratios fair; each time is the median over rounds."""
    impls = [("raystudy mask", ours("mask"), x, y), ("raystudy clip", ours("clip"), x, y),
             ("raystudy clip, every candidate", ours("clip", track=None), x, y),
             ("raystudy clip, track 1", ours("clip", track=1), x, y),
             ("raystudy clip, track 2, no band", ours("clip", track=2, band=None), x, y),
             ("raystudy no box", ours(None), x, y), ("foolbox", foolbox(True), x, y),
             ("foolbox no box", foolbox(False), x, y),
             ("torchattacks", torchattacks_df, x[:n_ref], y[:n_ref])]
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    res = {}
    for rnd in range(repeats):
        for name, fn, xs, ys in impls:
            if name == "torchattacks" and rnd > 0:
                continue   # minutes per run: once is enough for a reference this slow
            adv, fooled, steps, dt = timed(fn, model, xs, ys, device)
            if name in res:
                res[name]["times"].append(dt)
                continue
            with torch.no_grad():
                pred = model(adv).argmax(1)
            res[name] = {"name": name, "adv": adv, "fooled": fooled.bool(), "pred": pred,
                         "dist": (adv - xs).flatten(1).norm(dim=1), "times": [dt], "n": len(xs),
                         "steps": steps}
    for r in res.values():
        r["time"] = statistics.median(r["times"])
    return summarize(res, correct, n_ref)


def summarize(res: dict, correct: torch.Tensor, n_ref: int) -> tuple[list, list, dict]:
    boxed = ["raystudy mask", "raystudy clip", "foolbox"]
    common = correct.clone()
    for k in boxed:
        common &= res[k]["fooled"]
    fb_time = res["foolbox"]["time"]
    rows = []
    for r in res.values():
        c = correct[:r["n"]]
        ok = r["fooled"] & c
        on_common = common[:r["n"]] & r["fooled"] if r["name"] != "torchattacks" else ok
        rows.append({"deepfool": r["name"], "images": r["n"], "median s": f"{r['time']:.2f}",
                     "images/s": f"{r['n'] / r['time']:.1f}",
                     "speed vs foolbox": f"{fb_time / r['time'] * r['n'] / res['foolbox']['n']:.1f}x",
                     "success": f"{ok.sum().item() / max(1, c.sum().item()):.3f}",
                     "steps (sum, max)": "-" if r["steps"] is None else
                     f"{int(r['steps'].sum())}, {int(r['steps'].max())}",
                     "mean L2 (fooled)": f"{r['dist'][ok].mean().item():.4f}",
                     "mean L2 (common)": f"{r['dist'][on_common].mean().item():.4f}"})
    pairs = [("raystudy clip", "foolbox"), ("raystudy clip", "raystudy clip, every candidate"),
             ("raystudy clip, track 1", "foolbox"), ("raystudy clip, track 2, no band", "foolbox"),
             ("raystudy mask", "foolbox"), ("raystudy mask", "raystudy clip"),
             ("raystudy no box", "foolbox no box")]
    agree = [agreement(res[a], res[b], correct) for a, b in pairs]
    ref = {k: v[:n_ref] for k, v in res["raystudy mask"].items() if torch.is_tensor(v)}
    agree.append(agreement({**ref, "name": "raystudy mask"}, res["torchattacks"], correct[:n_ref]))
    return rows, agree, res


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500, help="digits per metric (throughput table)")
    ap.add_argument("--n-df", type=int, default=300, help="digits for the DeepFool comparison")
    ap.add_argument("--n-ref", type=int, default=30, help="of those, digits for torchattacks' DeepFool")
    ap.add_argument("--repeats", type=int, default=3, help="timings per implementation (median)")
    ap.add_argument("--only", choices=["metrics", "deepfool"], default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--fgsm-model", action="store_true",
                    help="train the model on clean + FGSM digits (2 epochs) instead of 1 natural epoch")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    from raystudy.data import load
    from raystudy.execute import pick_device
    from raystudy.metrics import EvalContext
    from raystudy.spec.schema import DataSpec

    device = pick_device(a.device)
    data = load(DataSpec(dataset="mnist", source="embedded", train_size=2000, test_size=1000)).to(device)
    model = trained_model(data, device, fgsm=a.fgsm_model)
    ctx = EvalContext(model, data, device)
    print(machine(), f"| {device} | {torch.get_num_threads()} thread(s)")
    if a.only != "deepfool":
        rows = metric_rows(ctx, a.n, device)
        print(table(rows, list(rows[0])))
        print()
    if a.only != "metrics":
        x, y = ctx.subset("test", a.n_df, 0)
        rows, agree, _ = run_deepfool(model, x, y, device, a.repeats, min(a.n_ref, len(x)))
        print(f"DeepFool on {len(x)} test digits ({int((model(x).argmax(1) == y).sum())} correctly classified), "
              f"median of {a.repeats} runs; 'common' = digits every boxed implementation fools")
        print(table(rows, list(rows[0])))
        print()
        print(table(agree, list(agree[0])))


if __name__ == "__main__":
    main()
