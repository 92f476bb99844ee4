"""One-shot GPU suite: what raystudy's studies cost on one GPU, in at most 8 minutes.

Synthetic MNIST-shaped data (60,000 x 1 x 28 x 28; CIFAR-shaped where a study trains on
CIFAR), built in-process, so nothing is downloaded. Every figure goes through raystudy's
own code: `raystudy.execute.run_trial` (the training loop, methods, `train.amp` and
`train.channels_last`), `raystudy.attacks.attack`, `raystudy.metrics.hessian`, and real
studies through Ray (`raystudy.runner.run_study`) for packing. Sections, in order:

  pgd         PGD-40 evaluation images/s (ε 0.3, 40 steps of 0.01) in fp32 and under bf16
              autocast, with both robust accuracies (raystudy's attack path has no bf16
              option: the autocast wraps `attacks.attack` here)
  hessian     top-1 Hessian eigenvalue time with the sgd_hparams settings, and per HVP
  knobs       training images/s with train.amp, train.channels_last, cudnn.benchmark
  packing     aggregate training images/s of 1, 2, 4, 8 StdCNN trials packed on the GPU
              through Ray (resources: {gpu: 1/k}); without Ray, k processes
  projection  per paper study (studies/*.yaml): one paper-scale trial's epoch time for each
              distinct model + method + batch size (a few steps, extrapolated), then the
              study's projected wall time, ideal and with the measured packing speed-up
              (formula printed; see _projection.py). Last, as it has the most to time: the
              budget cuts its tail (the CIFAR profiles) first.

Each figure prints as one line `name=value unit  # note` and lands in the JSON file (`--out`,
rewritten after every figure, so a run cut off still leaves what it measured). Each section
has a share of `--budget` seconds (unused time passes on) and starts no new work once its
share is spent; the packing section estimates a run before starting it.

GPU, one shot (the whole suite, under `timeout` as a backstop):
    timeout 480 python benchmarks/gpu_suite.py --out benchmarks/gpu_suite.json
CPU, toy sizes, the same code paths (tests/test_benchmarks.py runs this):
    python benchmarks/gpu_suite.py --cpu-smoke --out /tmp/gpu_suite_smoke.json
"""

from __future__ import annotations

import time

T_START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# This checkout's raystudy, also in Ray workers and spawned processes (they read PYTHONPATH),
# so the suite runs from a bare copy of the tree (no `pip install -e .` needed).
sys.path[:0] = [str(Path(__file__).parent), str(ROOT)]
os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
import _suite_sections as S  # noqa: E402
SECTIONS = ["pgd", "hessian", "knobs", "packing", "projection"]
SHARES = {"pgd": 0.09, "hessian": 0.06, "knobs": 0.10, "packing": 0.42, "projection": 0.33}
# Smoke runs take the plain studies (a profile and --smoke do not combine) and leave out
# svd_universal_gcnn, whose smoke keeps the full-width GCNN (seconds per step on a CPU).
SMOKE_STUDIES = ["sgd_hparams", "invariance_vs_robustness", "adversarial_vs_invariance", "cusp", "sgr"]
PAPER_STUDIES = ["sgd_hparams", "invariance_vs_robustness", "adversarial_vs_invariance", "cusp",
                 "svd_universal_gcnn", "sgr", "adversarial_vs_invariance:cifar10",
                 "invariance_vs_robustness:cifar10"]


class Budget:
    """Seconds left for the suite and a deadline per section: a section gets its share of
    what is left (so time one section leaves unused passes to the ones after it)."""

    def __init__(self, total: float, shares: dict[str, float]):
        self.total = total
        self.shares = dict(shares)

    def left(self) -> float:
        return self.total - (time.perf_counter() - T_START)

    def section(self, name: str) -> float:
        share = self.shares.pop(name, 0.0)
        rest = share + sum(self.shares.values())
        return time.perf_counter() + max(0.0, self.left()) * (share / rest if rest else 1.0)


class Out:
    """Figures as `name=value unit` lines and a JSON file rewritten after each one."""

    def __init__(self, path: Path, header: dict):
        self.path = path
        self.data = {"header": header, "figures": [], "sections": {}}
        path.parent.mkdir(parents=True, exist_ok=True)
        for k, v in header.items():
            print(f"# {k}: {v}", flush=True)
        self.save()

    def fig(self, name: str, value, unit: str = "", note: str = "") -> None:
        if isinstance(value, float):
            value = float(f"{value:.4g}")
        print(f"{name}={value} {unit}".rstrip() + (f"  # {note}" if note else ""), flush=True)
        self.data["figures"].append({"name": name, "value": value, "unit": unit, "note": note})
        self.save()

    def section(self, name: str, **info) -> None:
        self.data["sections"][name] = info
        self.save()

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        os.replace(tmp, self.path)


def versions() -> dict:
    """Installed versions, read from package metadata (importing escnn or Ray costs seconds)."""
    from importlib.metadata import PackageNotFoundError, version
    out = {}
    for dist in ("ray", "escnn", "pyhessian", "torchattacks", "pydantic", "numpy", "foolbox"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "not installed"
    return out


def header(args, device: torch.device) -> dict:
    cuda = device.type == "cuda"
    props = torch.cuda.get_device_properties(device) if cuda else None
    return {
        "suite": "raystudy gpu_suite", "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "mode": "cpu-smoke" if args.cpu_smoke else "full",
        "device": torch.cuda.get_device_name(device) if cuda else f"cpu ({platform.processor() or platform.machine()})",
        "gpu_memory_gib": round(props.total_memory / 2**30, 1) if props else None,
        "cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
        "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if cuda else None,
        **versions(), "budget_s": args.budget, "sections": args.sections,
    }


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "gpu_suite.json")
    ap.add_argument("--cpu-smoke", action="store_true", help="toy sizes on the CPU (the test suite runs this)")
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds for the whole suite (default 420: 8 minutes less a margin; smoke 300)")
    ap.add_argument("--device", default=None, help="default cuda (cpu with --cpu-smoke)")
    ap.add_argument("--sections", nargs="+", choices=SECTIONS, default=SECTIONS)
    ap.add_argument("--studies", nargs="+", default=None,
                    help="studies under studies/ for the projection, NAME or NAME:PROFILE "
                         f"(default {' '.join(PAPER_STUDIES)}; smoke {' '.join(SMOKE_STUDIES)})")
    ap.add_argument("--packs", type=int, nargs="+", default=None, help="trials per GPU (default 1 2 4 8; smoke 1 2)")
    ap.add_argument("--pack-mode", choices=["auto", "ray", "processes"], default="auto",
                    help="auto: Ray when importable, else k plain processes")
    a = ap.parse_args(argv)
    a.budget = a.budget or (300.0 if a.cpu_smoke else 420.0)
    a.device = a.device or ("cpu" if a.cpu_smoke else "cuda")
    a.studies = a.studies or (SMOKE_STUDIES if a.cpu_smoke else PAPER_STUDIES)
    a.packs = a.packs or ([1, 2] if a.cpu_smoke else [1, 2, 4, 8])
    return a


def main(argv=None) -> int:
    args = parse(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device here; use --cpu-smoke (or --device cpu) on a CPU machine", file=sys.stderr)
        return 2
    if args.cpu_smoke:
        torch.set_num_threads(1)
    out = Out(args.out, header(args, device))
    budget = Budget(args.budget, {k: v for k, v in SHARES.items() if k in args.sections})
    ctx = S.Context(args=args, device=device, out=out, root=ROOT)
    for name in SECTIONS:
        if name not in args.sections:
            continue
        deadline = budget.section(name)
        t0 = time.perf_counter()
        status = "ok"
        try:
            getattr(S, f"section_{name}")(ctx, deadline)
        except Exception as e:  # noqa: BLE001 - one broken section must not lose the others
            status = f"failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            print(f"# section {name} {status}", flush=True)
        used = time.perf_counter() - t0
        out.section(name, status=status, seconds=round(used, 1),
                    over_budget_s=round(max(0.0, time.perf_counter() - deadline), 1))
        S.free_memory(device)
    out.fig("suite.wall_s", time.perf_counter() - T_START, "s", f"budget {args.budget:.0f} s")
    failed = [k for k, v in out.data["sections"].items() if v["status"] != "ok"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
