"""raystudy command line: validate | plan | run | status | report | claims | collect."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .errors import StudyError, StudyErrors

EXIT_BAD_INPUT = 2
# `raystudy claims --strict` when a claim is contradicted (bad input stays 2).
EXIT_CONTRADICTED = 1


def _print_error(e: StudyError) -> None:
    errs = e.errors if isinstance(e, StudyErrors) else [e]
    for err in errs:
        print(f"error: {err.render()}", file=sys.stderr)


def _load(args, file, expand=True):
    from .spec import load_study
    return load_study(file, smoke=getattr(args, "smoke", False), profile=getattr(args, "profile", None),
                      sets=getattr(args, "set", None) or [], expand_trials=expand)


def cmd_validate(args) -> int:
    bad = 0
    for f in args.files:
        try:
            study = _load(args, f)
        except StudyError as e:
            _print_error(e)
            bad += 1
            continue
        search = study.spec.tune.search
        size = (f"tune.search of up to {search.num_samples} trials" if search is not None
                else f"{len(study.trials)} trials")
        print(f"ok: {f}: study '{study.name}', {size}")
    return EXIT_BAD_INPUT if bad else 0


def cmd_plan(args) -> int:
    study = _load(args, args.file)
    import pandas as pd
    rows = [{"trial_id": t.trial_id, **t.params} for t in study.trials]
    search = study.spec.tune.search
    if search is not None:
        print(f"study '{study.name}': tune.search ({search.name}/{search.sampler}) proposes up to "
              f"{search.num_samples} trials while it runs; a random draw of the space (validated):")
    else:
        print(f"study '{study.name}': {len(study.trials)} trials")
    if args.params:
        from .models import build_model, count_parameters
        counts: dict[str, int] = {}
        for r, t in zip(rows, study.trials):
            key = repr((t.config["model"], t.config["data"]["dataset"]))
            if key not in counts:
                info = _info_for(t.config["data"]["dataset"])
                counts[key] = count_parameters(build_model(study.plan.parsed[t.trial_id].model, info))
            r["model.arch"] = t.config["model"]["arch"]
            r["params"] = counts[key]
    if rows:
        df = pd.DataFrame(rows)
        with pd.option_context("display.max_rows", args.max_rows, "display.width", 200,
                               "display.max_columns", 50):
            print(df.to_string(index=False, max_rows=args.max_rows))
    return 0


def _info_for(dataset: str):
    from .data import CIFAR10_STATS, CIFAR100_STATS, MNIST_STATS, DataInfo
    if dataset == "cifar10":
        return DataInfo(3, 32, 32, 10, *CIFAR10_STATS)
    if dataset == "cifar100":
        return DataInfo(3, 32, 32, 100, *CIFAR100_STATS)
    if dataset == "synthetic":
        return DataInfo(1, 12, 12, 4, (0.5,), (0.25,))
    return DataInfo(1, 28, 28, 10, *MNIST_STATS)


def cmd_run(args) -> int:
    study = _load(args, args.file)
    from .runner import run_study
    if args.results is None:
        # Smoke runs go to their own folder: a later full run must not be mistaken for a
        # changed study (its base config differs) and refused.
        args.results = os.environ.get("RAYSTUDY_RESULTS") or ("results/smoke" if args.smoke else "results")
    out = Path(args.results) / study.name
    try:
        summary = run_study(study, args.results, address=args.address, max_concurrent=args.max_concurrent,
                            dashboard=not args.no_dashboard, retry_failed=args.retry_failed,
                            force_new=args.force_new, code_policy=args.code_policy)
    except KeyboardInterrupt as e:
        s = getattr(e, "summary", None)
        done = f"{s.completed}/{s.total} trials completed" if s else "finished trials are kept"
        import shlex
        again = [a for a in (getattr(args, "argv", None) or ["run", args.file]) if a != "--force-new"]
        resume = shlex.join(["raystudy", *again])
        print(f"\ninterrupted: {done}; results in {out}.\n"
              f"resume with the same command: {resume}\n"
              f"(completed trials are skipped; unfinished ones continue from their last checkpoint)",
              file=sys.stderr)
        return 130
    stopped = f", {summary.stopped} stopped early" if summary.stopped else ""
    print(f"raystudy: {summary.completed}/{summary.total} trials completed{stopped}, {summary.failed} failed "
          f"in {summary.wall_s:.1f}s; tables in {summary.out}")
    if summary.best:
        print(f"  best: {summary.best}")
    if summary.experiment is not None:
        # Ray's own tools read one Tune experiment, not the study folder that holds them all.
        print(f"  Ray Tune experiment (ExperimentAnalysis, Tuner.restore, tensorboard --logdir): {summary.experiment}")
    for tid, reason in summary.failures:
        print(f"  failed {tid}: {reason}")
    if summary.failed:
        print("  (re-run with --retry-failed to try failed trials again)")
    if summary.unhealthy:
        print(f"  {len(summary.unhealthy)} trial(s) recorded unhealthy; `raystudy status {out}` lists them")
    return 0


def cmd_status(args) -> int:
    from .layout import Layout
    from .results import load_tables
    out = Path(args.dir)
    plan = Layout(out).read_plan()
    if plan is None:
        raise StudyError(f"no study results in '{out}'", path="DIR",
                         hint="give a results folder such as results/quickstart")
    trials, _ = load_tables(out)
    total = len(plan["trials"])
    ids = {t["trial_id"] for t in plan["trials"]}
    st = trials[trials["trial_id"].isin(ids)] if len(trials) else trials
    done = int((st["status"] == "completed").sum()) if len(st) else 0
    failed = int((st["status"] == "error").sum()) if len(st) else 0
    stopped = int((st["status"] == "stopped").sum()) if len(st) else 0
    print(f"study '{plan['name']}': {total} trials: {done} completed, "
          + (f"{stopped} stopped early, " if stopped else "")
          + f"{failed} failed, {total - done - failed - stopped} pending or running")
    if failed:
        for _, r in st[st["status"] == "error"].iterrows():
            print(f"  failed {r['trial_id']}: {r['error']}")
    _print_unhealthy(st, plan)
    _print_versions(st)
    exps = Layout(out).experiments()
    if exps:
        print(f"  Ray Tune experiments, newest first (for ExperimentAnalysis / Tuner.restore): "
              + ", ".join(str(e) for e in exps))
    return 0


def _print_unhealthy(trials, plan: dict) -> None:
    """The completed trials judged unhealthy, with their failed checks (raystudy.healthview)."""
    from .healthview import describe, rejudge, unhealthy
    bad = unhealthy(rejudge(trials.to_dict("records"), plan))
    if not bad:
        return
    params = {t["trial_id"]: t.get("params") for t in plan["trials"]}
    print(f"  {len(bad)} unhealthy (their numbers may not be believable; the `health:` section sets the checks):")
    for tid, flags in bad:
        print(f"  unhealthy {describe(tid, params.get(tid), flags)}")


def _print_versions(trials) -> None:
    """The code and package versions the recorded trials were made by (provenance)."""
    from .provenance import code_record, describe, versions_present
    if not len(trials):
        return
    print(f"code and versions of the recorded trials (this checkout: {describe(code_record())}):")
    for line in versions_present(trials.to_dict("records")):
        print(line)


def cmd_report(args) -> int:
    try:
        from analysis.report import build_report
    except ImportError:
        raise StudyError("the report builder is not installed", hint="pip install -e .") from None
    out = Path(args.out) if args.out else None
    if len(args.dir) > 1:
        # Several studies: their shared metrics on one page, the study as the colour.
        from analysis.compare import build_cross_report
        path = build_cross_report([Path(d) for d in args.dir], out=out, png=not args.no_png)
    else:
        path = build_report(Path(args.dir[0]), out=out, png=not args.no_png)
    print(f"report: {path}")
    return 0


def cmd_claims(args) -> int:
    """Recompute the study's claims from its results folder into claims.parquet and print the
    verdicts; with --strict, exit 1 when any claim is contradicted (for a research repo's CI)."""
    try:
        from analysis.claim_views import text_table
        from analysis.claims import write_claims
    except ImportError:
        raise StudyError("the analysis package is not installed", hint="pip install -e .") from None
    df = write_claims(Path(args.dir))
    if df is None:
        print(f"the study in {args.dir} declares no claims (add a claims: section to the study file and run it)")
        return 0
    print(text_table(df))
    from .layout import CLAIMS
    print(f"claims: {Path(args.dir) / CLAIMS}")
    contradicted = df[df["verdict"] == "contradicted"]["claim"].tolist()
    if args.strict and contradicted:
        print(f"--strict: {len(contradicted)} claim(s) contradicted: {', '.join(contradicted)}", file=sys.stderr)
        return EXIT_CONTRADICTED
    return 0


def cmd_collect(args) -> int:
    from .collect import collect
    n = collect(Path(args.dir))
    print(f"collected {n} trials into {args.dir}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="raystudy", description="Run robustness studies from one YAML file.")
    sub = p.add_subparsers(dest="cmd", required=True)

    def study_opts(sp):
        sp.add_argument("--smoke", action="store_true", help="shrink the study to run in seconds")
        sp.add_argument("--profile", help="apply a named profile of the study (e.g. cpu)")
        sp.add_argument("--set", action="append", metavar="PATH=VALUE", help="override a value (repeatable)")

    sp = sub.add_parser("validate", help="check study files (exit 2 on errors)")
    sp.add_argument("files", nargs="+")
    study_opts(sp)
    sp.set_defaults(fn=cmd_validate)

    sp = sub.add_parser("plan", help="print the trials a study expands to")
    sp.add_argument("file")
    sp.add_argument("--max-rows", type=int, default=60)
    sp.add_argument("--params", action="store_true", help="also count each model's parameters")
    study_opts(sp)
    sp.set_defaults(fn=cmd_plan)

    sp = sub.add_parser("run", help="run a study (resumes if results exist)")
    sp.add_argument("file")
    study_opts(sp)
    sp.add_argument("--address", help="join an existing Ray cluster (e.g. auto or HOST:6379)")
    sp.add_argument("--results", default=None,
                    help="results root (default: $RAYSTUDY_RESULTS or results/; results/smoke/ with --smoke)")
    sp.add_argument("--max-concurrent", type=int)
    sp.add_argument("--no-dashboard", action="store_true")
    sp.add_argument("--retry-failed", action="store_true", help="run failed trials again")
    sp.add_argument("--force-new", action="store_true",
                    help="start a fresh results folder (the old one is moved to <study>.old-<time>)")
    code = sp.add_mutually_exclusive_group()
    code.add_argument("--rerun-changed-code", dest="code_policy", action="store_const", const="rerun",
                      help="run again the finished trials that other code made (default: reuse them, with a warning)")
    code.add_argument("--strict-code", dest="code_policy", action="store_const", const="strict",
                      help="refuse (exit 2) when finished trials were made by other code")
    sp.set_defaults(fn=cmd_run, code_policy="reuse")

    sp = sub.add_parser("status", help="trials done / failed / pending of a results folder")
    sp.add_argument("dir")
    sp.set_defaults(fn=cmd_status)

    sp = sub.add_parser("report", help="render the study's charts to HTML and PNG; several folders: "
                                       "their shared metrics overlaid, the study as the colour")
    sp.add_argument("dir", nargs="+")
    sp.add_argument("--out")
    sp.add_argument("--no-png", action="store_true")
    sp.set_defaults(fn=cmd_report)

    sp = sub.add_parser("claims", help="the verdicts of the study's claims (recomputed into claims.parquet)")
    sp.add_argument("dir")
    sp.add_argument("--strict", action="store_true", help="exit 1 when any claim is contradicted")
    sp.set_defaults(fn=cmd_claims)

    sp = sub.add_parser("collect", help="rebuild the tables from the Ray Tune experiment folders")
    sp.add_argument("dir")
    sp.set_defaults(fn=cmd_collect)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        return args.fn(args) or 0
    except StudyError as e:
        _print_error(e)
        return EXIT_BAD_INPUT
    except BrokenPipeError:
        # `raystudy plan big.yaml | head`: the reader left; not an error of ours. Point
        # stdout at devnull so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
