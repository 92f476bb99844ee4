"""Every bad input of issue 9: a clear message that names the key path, exit code 2,
never a traceback. Each row is (id, study text or edit, extra argv, path, words)."""

from __future__ import annotations

import re
import socket

import pytest

from raystudy.cli import main

GOOD = """\
name: bad
data: {dataset: synthetic, train_size: 64, test_size: 32}
model: {arch: stdcnn_mnist, channels: [4, 4, 8, 8], hidden: 16}
train:
  epochs: 1
  batch_size: 32
  optimizer: {name: sgd, lr: 0.05}
  method: {name: natural}
  augment: {rotation: 0}
space:
  seed: {grid: [0, 1]}
evaluate: [accuracy]
resources: {cpu: 1, gpu: 0}
"""


def edit(old: str, new: str) -> str:
    assert old in GOOD, old
    return GOOD.replace(old, new)


SPACE = "  seed: {grid: [0, 1]}"


def alias_bomb(levels: int = 9) -> str:
    """A 'billion laughs': each level lists the previous one nine times (9^9 strings, < 1 KB)."""
    names = "abcdefghijk"[:levels]
    lines = ["bomb:", f"  {names[0]}: &{names[0]} [" + ", ".join(['"lol"'] * 9) + "]"]
    for prev, cur in zip(names, names[1:]):
        lines.append(f"  {cur}: &{cur} [" + ", ".join([f"*{prev}"] * 9) + "]")
    return "\n".join(lines) + "\n"

LR = "  train.optimizer.lr: {expr: %s}"
LOGLR = "  train.optimizer.lr: {loguniform: [0.001, 0.1]}"


def searched(space: str, search: str = "") -> str:
    """GOOD with `space` and a tune.search section (`search` overrides its keys)."""
    keys = dict(kv.split(": ", 1) for kv in "metric: accuracy, mode: max, num_samples: 4".split(", "))
    for kv in filter(None, (s.strip() for s in re.split(r",\s*(?![^\[{]*[\]}])", search))):
        k, v = kv.split(": ", 1)
        keys[k] = v
    body = ", ".join(f"{k}: {v}" for k, v in keys.items())
    return edit(SPACE, space).replace("resources:", f"tune: {{search: {{name: optuna, {body}}}}}\nresources:")


def scheduled(options: str = "") -> str:
    """GOOD with 2 epochs and an ASHA scheduler on val_accuracy (`options` overrides its keys)."""
    keys = {"name": "asha", "metric": "val_accuracy", "mode": "max", "grace_period": "1"}
    for kv in filter(None, (s.strip() for s in options.split(","))):
        k, v = kv.split(": ", 1)
        keys[k] = v
    body = ", ".join(f"{k}: {v}" for k, v in keys.items())
    return edit("  epochs: 1", "  epochs: 2").replace("resources:", f"tune: {{scheduler: {{{body}}}}}\nresources:")

# (id, study text, path the message must name, words it must contain)
VALIDATE_CASES = [
    # malformed YAML: no key path exists yet, so line and column stand in for it
    ("yaml-unclosed-list", edit("  batch_size: 32", "  batch_size: [32"), "line 7, column", "malformed YAML"),
    ("yaml-tab", edit("  epochs: 1", "\tepochs: 1"), "line 5, column 1", "malformed YAML"),
    ("yaml-not-a-mapping", "- name: bad\n", "bad.yaml: ", "must be a mapping"),
    # unknown keys and names, with a suggestion
    ("unknown-top-key", edit("train:", "trian:"), "trian", "did you mean 'train'"),
    ("unknown-nested-key", edit("  batch_size: 32", "  batch_sise: 32"), "train.batch_sise",
     "did you mean 'batch_size'"),
    ("unknown-arch", edit("arch: stdcnn_mnist", "arch: stdcnn_mnsit"), "model.arch", "did you mean 'stdcnn_mnist'"),
    ("unknown-model-option", edit("hidden: 16", "hiden: 16"), "model.hiden", "did you mean 'hidden'"),
    ("unknown-optimizer", edit("{name: sgd, lr: 0.05}", "{name: sdg, lr: 0.05}"), "train.optimizer.name",
     "did you mean 'sgd'"),
    ("unknown-method", edit("{name: natural}", "{name: pgd}"), "train.method.name", "unknown training method"),
    ("unknown-method-option", edit("{name: natural}", "{name: pgd_at, epsilon: 0.3}"), "train.method.epsilon",
     "did you mean 'eps'"),
    ("unknown-metric", edit("evaluate: [accuracy]", "evaluate: [acuracy]"), "evaluate.0", "did you mean 'accuracy'"),
    ("unknown-dataset", edit("dataset: synthetic", "dataset: minst"), "data.dataset", "did you mean 'mnist'"),
    ("missing-model", edit("model: {arch: stdcnn_mnist, channels: [4, 4, 8, 8], hidden: 16}\n", ""), "model",
     "required key is missing"),
    # wrong types
    ("epochs-word", edit("  epochs: 1", "  epochs: three"), "train.epochs", "valid integer"),
    ("batch-list", edit("  batch_size: 32", "  batch_size: [32]"), "train.batch_size", "valid integer"),
    ("lr-string", edit("lr: 0.05}", "lr: fast}"), "train.optimizer.lr", "number"),
    ("augment-not-mapping", edit("  augment: {rotation: 0}", "  augment: 30"), "train.augment", "dictionary"),
    # out of range
    ("negative-epochs", edit("  epochs: 1", "  epochs: -3"), "train.epochs", "greater than or equal to 0"),
    ("batch-zero", edit("  batch_size: 32", "  batch_size: 0"), "train.batch_size", "greater than or equal to 1"),
    ("eps-above-1", edit("{name: natural}", "{name: pgd_at, eps: 1.5}"), "train.method.eps", "outside [0, 1]"),
    ("eps-negative", edit("{name: natural}", "{name: pgd_at, eps: -0.1}"), "train.method.eps", "outside [0, 1]"),
    ("eps-in-space", edit("{name: natural}", "{name: pgd_at}").replace(SPACE, "  train.method.eps: {grid: [8/255, 2]}"),
     "train.method.eps", "outside [0, 1]"),
    ("theta-above-180", edit("{rotation: 0}", "{rotation: 270}"), "train.augment.rotation", "outside [0, 180]"),
    ("theta-negative", edit("{rotation: 0}", "{rotation: -5}"), "train.augment.rotation", "outside [0, 180]"),
    ("gpu-fraction-above-1", edit("gpu: 0}", "gpu: 1.5}"), "resources.gpu", "GPU fraction above 1"),
    ("cpu-zero", edit("{cpu: 1,", "{cpu: 0,"), "resources.cpu", "greater than 0"),
    ("val-fraction-1", edit("test_size: 32}", "test_size: 32, val_fraction: 1.0}"), "data.val_fraction", "less than 1"),
    # empty grids and broken space entries
    ("empty-grid", edit(SPACE, "  seed: {grid: []}"), "space.seed.grid", "empty 'grid'"),
    ("empty-choice", edit(SPACE, "  seed: {choice: []}"), "space.seed.choice", "empty 'choice'"),
    ("zip-uneven", edit(SPACE, "  pair: {zip: {seed: [0, 1], train.epochs: [1]}}"), "space.pair.zip", "differ in length"),
    ("uniform-reversed", edit(SPACE, "  train.optimizer.lr: {uniform: [0.1, 0.01]}"), "space.train.optimizer.lr.uniform",
     "low < high"),
    ("too-many-trials", edit("resources:", "tune: {num_samples: 100000000}\nresources:"), "tune.num_samples",
     "expands to 200000000 trials"),
    # expr: unknown names, anything beyond arithmetic / comparison / conditionals
    ("expr-unknown-name", edit(SPACE, LR % '"0.1 * train.batch_sise / 128"'), "space.train.optimizer.lr.expr",
     "did you mean 'train.batch_size'"),
    ("expr-syntax", edit(SPACE, LR % '"0.1 *"'), "space.train.optimizer.lr.expr", "cannot parse"),
    ("expr-import", edit(SPACE, LR % '"__import__(\'os\').system(\'true\')"'), "space.train.optimizer.lr.expr",
     "function call not allowed"),
    ("expr-untaken-branch", edit(SPACE, LR % '"0.1 if True else open(\'/etc/passwd\')"'),
     "space.train.optimizer.lr.expr", "function call not allowed"),
    ("expr-lambda", edit(SPACE, LR % '"(lambda: 1)()"'), "space.train.optimizer.lr.expr", "not allowed"),
    ("expr-comprehension", edit(SPACE, LR % '"[x for x in [1]]"'), "space.train.optimizer.lr.expr", "ListComp"),
    ("expr-dunder", edit(SPACE, LR % '"(1).__class__"'), "space.train.optimizer.lr.expr", "attribute access"),
    ("expr-subscript", edit(SPACE, LR % '"train.optimizer[0]"'), "space.train.optimizer.lr.expr", "Subscript"),
    ("expr-walrus", edit(SPACE, LR % '"(x := 1)"'), "space.train.optimizer.lr.expr", "NamedExpr"),
    ("expr-in", edit(SPACE, LR % '"1 in [1]"'), "space.train.optimizer.lr.expr", "comparison In"),
    ("expr-huge-int", edit(SPACE, LR % '"((9 ** 64) ** 64) ** 64"'), "space.train.optimizer.lr.expr", "too large"),
    ("expr-complex", edit(SPACE, LR % '"(-8) ** 0.5"'), "space.train.optimizer.lr.expr", "not a real number"),
    ("expr-div-zero", edit(SPACE, LR % '"1 / 0"'), "space.train.optimizer.lr.expr", "division by zero"),
    ("expr-cycle", edit(SPACE, "  a: {expr: 'b + 1'}\n  b: {expr: 'a + 1'}"), "space", "cycle"),
    # hostile or mistaken YAML (issue 19)
    ("yaml-alias-bomb", GOOD + alias_bomb(), "bad.yaml: ", "alias bomb"),
    ("yaml-recursive-alias", GOOD + "loop: &l [1, *l]\n", "bad.yaml: line 14", "never ends"),
    ("yaml-duplicate-key", GOOD + "train:\n  epochs: 2\n", "train: line 14", "first written at line 4"),
    ("yaml-duplicate-nested-key", edit("  epochs: 1", "  epochs: 1\n  epochs: 2"), "train.epochs: line 6",
     "duplicate key 'epochs' (first written at line 5)"),
    ("eps-nan", edit("{name: natural}", "{name: pgd_at, eps: .nan}"), "train.method.eps", "not a finite number"),
    ("eps-nan-in-list", edit("evaluate: [accuracy]", "evaluate: [{robustness: {attack: pgd, eps: [.nan]}}]"),
     "evaluate.0.robustness.eps.0", "not a finite number"),
    ("lr-inf", edit("lr: 0.05}", "lr: .inf}"), "train.optimizer.lr", "finite number"),
    ("rotation-nan-string", edit("{rotation: 0}", "{rotation: 'nan'}"), "train.augment.rotation",
     "not a finite number"),
    # tune.search / tune.scheduler / tracking (issue 21): what a searcher cannot take, with the reason
    ("search-expr", searched(LR % '"0.05 * 2"'), "space.train.optimizer.lr",
     "an 'expr' entry cannot be searched: the searcher proposes every value it varies on its own"),
    ("search-zip", searched("  pair: {zip: {train.epochs: [1, 2], train.batch_size: [16, 32]}}"), "space.pair",
     "a 'zip' entry cannot be searched: its paths vary together as rows of a table"),
    ("search-seed", searched(SPACE), "space.seed", "a searcher would tune the seed as if it were a hyperparameter"),
    ("search-data", searched("  data.train_size: {choice: [32, 64]}"), "space.data.train_size",
     "loaded once before Ray starts"),
    ("search-nothing", searched("  train.epochs: 1"), "tune.search", "has nothing to search"),
    ("search-unknown-metric", searched(LOGLR, "metric: acuracy"), "tune.search.metric", "did you mean 'accuracy'"),
    ("search-per-epoch-metric", searched(LOGLR, "metric: val_accuracy"), "tune.search.metric",
     "reported per epoch: a scheduler can use it"),
    ("search-modes", searched(LOGLR, "metric: [accuracy, num_params]"), "tune.search",
     "give metric and mode both as single values or both as lists"),
    ("search-sampler-option", searched(LOGLR, "options: {n_startup: 3}"), "tune.search.options",
     "the tpe sampler refuses these options"),
    ("search-cmaes-two-metrics", searched(LOGLR, "sampler: cmaes, metric: [accuracy, num_params], mode: [max, min]"),
     "tune.search.sampler", "optimizes one metric"),
    ("search-num-samples", searched(LOGLR).replace("tune: {", "tune: {num_samples: 3, "), "tune.num_samples",
     "the budget is tune.search.num_samples"),
    ("search-sampler-unknown", searched(LOGLR, "sampler: tpee"), "tune.search.sampler", "'tpe'"),
    ("scheduler-final-metric", scheduled("metric: accuracy"), "tune.scheduler.metric", "not reported every epoch"),
    ("scheduler-grace", scheduled("grace_period: 3"), "tune.scheduler.grace_period", "leaves no epoch to stop at"),
    ("scheduler-option", scheduled("name: median, reduction_factor: 3"), "tune.scheduler.reduction_factor",
     "not an option of the 'median' scheduler"),
    ("scheduler-no-val-split", scheduled().replace("test_size: 32}", "test_size: 32, val_fraction: 0}"),
     "tune.scheduler.metric", "val_accuracy needs a validation split"),
    ("tracking-typo", GOOD + "tracking: {tensorbord: true}\n", "tracking.tensorbord", "did you mean 'tensorboard'"),
    ("tracking-wandb-mode", GOOD + "tracking: {wandb: {mode: offlien}}\n", "tracking.wandb.mode", "'offline'"),
]


def _run(argv, capsys):
    rc = main(argv)
    cap = capsys.readouterr()
    return rc, cap.err + cap.out


def _assert_clean(rc, text, path, words):
    assert rc == 2, text
    assert path in text, f"the message should name {path!r}: {text}"
    assert words in text, text
    assert "Traceback" not in text
    assert text.startswith("error: ")


@pytest.mark.parametrize("case", VALIDATE_CASES, ids=[c[0] for c in VALIDATE_CASES])
def test_bad_study_file(case, tmp_path, capsys):
    _, text, path, words = case
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    rc, out = _run(["validate", str(f)], capsys)
    _assert_clean(rc, out, path, words)
    assert str(f) in out
    # `run` refuses the same file before anything starts.
    rc, out = _run(["run", str(f), "--results", str(tmp_path / "r"), "--no-dashboard"], capsys)
    _assert_clean(rc, out, path, words)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("tail", [alias_bomb(), "train:\n  epochs: 2\n"], ids=["alias-bomb", "duplicate-key"])
def test_hostile_yaml_is_refused_in_under_a_second(tail, tmp_path, capsys):
    """A sub-1 KB alias bomb used to hang `validate` for minutes; a repeated key used to be
    silently dropped. Both are refused while the YAML is read, before any registry loads."""
    import time
    f = tmp_path / "bad.yaml"
    f.write_text(GOOD + tail)
    assert len(alias_bomb().encode()) < 1024
    t0 = time.perf_counter()
    rc, out = _run(["validate", str(f)], capsys)
    assert time.perf_counter() - t0 < 1.0
    assert rc == 2 and str(f) in out and "Traceback" not in out
    if "train:" in tail:
        assert "line 14" in out and "line 4" in out


def test_the_good_study_is_accepted(tmp_path, capsys):
    """The control: the study every case above breaks in one place validates."""
    f = tmp_path / "good.yaml"
    f.write_text(GOOD)
    rc, out = _run(["validate", str(f)], capsys)
    assert rc == 0 and "2 trials" in out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("case", ["missing-dataset", "missing-mnist-root", "unreachable-address", "bad-address", "unwritable-results",
                                  "bad-set", "unknown-profile", "missing-file", "bad-fault-hook"])
def test_bad_run_inputs(case, tmp_path, capsys, monkeypatch):
    f = tmp_path / "s.yaml"
    f.write_text(GOOD)
    res = tmp_path / "results"
    argv = ["run", str(f), "--results", str(res), "--no-dashboard"]
    if case == "missing-dataset":
        # CIFAR-10 files absent: caught in the driver while loading data, before Ray starts.
        (tmp_path / "empty").mkdir()
        f.write_text(edit("dataset: synthetic", f"dataset: cifar10, root: '{tmp_path / 'empty'}'"))
        path, words = "data.root", "CIFAR-10 files not found"
    elif case == "missing-mnist-root":
        # A root the study names that does not exist: an error, not the embedded digits.
        f.write_text(edit("dataset: synthetic", f"dataset: mnist, root: '{tmp_path / 'nope'}'"))
        path, words = "data.root", f"has no MNIST files under {(tmp_path / 'nope').resolve()}"
    elif case == "unreachable-address":
        argv += ["--address", f"127.0.0.1:{_free_port()}"]
        path, words = "--address", "cannot reach the Ray cluster"
    elif case == "bad-address":
        argv += ["--address", "no-port-here"]
        path, words = "--address", "not a Ray address"
    elif case == "unwritable-results":
        blocker = tmp_path / "a-file"
        blocker.write_text("x")
        argv[argv.index(str(res))] = str(blocker / "results")
        path, words = "--results", "not writable"
    elif case == "bad-set":
        argv += ["--set", "train.epochs=-1"]
        path, words = "train.epochs", "greater than or equal to 0"
    elif case == "unknown-profile":
        argv += ["--profile", "gpu"]
        path, words = "profiles", "unknown profile 'gpu'"
    elif case == "missing-file":
        argv[1] = str(tmp_path / "nope.yaml")
        path, words = "nope.yaml", "file not found"
    elif case == "bad-fault-hook":
        monkeypatch.setenv("RAYSTUDY_FAULT", "explode@1")
        path, words = "RAYSTUDY_FAULT", "cannot read"
    rc, out = _run(argv, capsys)
    _assert_clean(rc, out, path, words)
    if case.startswith("missing-"):   # refused in the driver before any Ray trial ran
        assert not list(res.glob("**/tune-*"))


@pytest.mark.slow  # starts the shared local Ray when run alone
def test_resources_no_node_can_satisfy(ray_local, tmp_path, capsys):
    f = tmp_path / "s.yaml"
    f.write_text(edit("{cpu: 1, gpu: 0}", "{cpu: 64, gpu: 0}"))
    rc, out = _run(["run", str(f), "--results", str(tmp_path / "r"), "--no-dashboard"], capsys)
    _assert_clean(rc, out, "resources", "no node can satisfy cpu=64")
    assert "largest node: cpu=2" in out


def test_a_closed_pipe_ends_the_cli_quietly():
    # `raystudy plan study.yaml | head -1`: the reader leaves early; no traceback, exit 0.
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-m", "raystudy.cli", "plan", str(root / "studies" / "cusp.yaml"),
                             "--profile", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=root)
    first = proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0
    assert first.startswith(b"study 'cusp'") and "Traceback" not in err and "BrokenPipe" not in err
