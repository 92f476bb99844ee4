"""tune.search and tune.scheduler: real Optuna through Tune's OptunaSearch, real Ray for the runs.

The searcher is driven without Ray where only its decisions matter (what it proposes, what it
is told): the test plays Tune's part, calling suggest / on_trial_complete as the controller does.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import yaml

pytest.importorskip("optuna", reason="tune.search needs the tune extra: pip install -e '.[tune]' (make install does)")

from raystudy.cli import main  # noqa: E402
from raystudy.layout import Layout
from raystudy.results import TRIALS, ResultStore
from raystudy.search import Codec, SearchRun, StudySearcher
from raystudy.spec import load_study
from raystudy.spec.load import load_document
from raystudy.spec.space import expand, trial_from_values
from raystudy.spec.tuning import searched_entries

BASE = """
name: {name}
data: {{dataset: synthetic, train_size: {train_size}, test_size: 64}}
model: {{arch: stdcnn_mnist, channels: [4, 4, 8, 8], hidden: 16}}
train:
  epochs: {epochs}
  batch_size: 16
  optimizer: {{name: {opt}, lr: 0.01}}
space:
{space}
evaluate: [accuracy]
resources: {{cpu: 1}}
tune:
{tune}
"""

CONTINUOUS = ("  train.optimizer.lr: {loguniform: [0.0001, 1.0]}\n"
              "  train.optimizer.momentum: {uniform: [0.0, 0.99]}")


def doc(space: str = CONTINUOUS, tune: str = "", *, name: str = "s", epochs: int = 1, opt: str = "sgd",
        train_size: int = 128, **search):
    if search:
        tune = "  search: " + json.dumps({"name": "optuna", "metric": "accuracy", "mode": "max", **search}) + "\n" + tune
    return BASE.format(name=name, space=space, tune=tune or "  {}", epochs=epochs, opt=opt, train_size=train_size)


def study_of(text: str, file: str = "s.yaml"):
    return load_document(yaml.safe_load(text), file=file)


def objective(config: dict) -> float:
    """A closed form with its maximum 1 at lr = 1e-2, momentum = 0.9."""
    lr, m = config["train"]["optimizer"]["lr"], config["train"]["optimizer"]["momentum"]
    return 1 - ((math.log10(lr) + 2) / 4) ** 2 - ((m - 0.9) / 0.99) ** 2


def play_tune(searcher: StudySearcher, budget: int, score, rows: dict | None = None) -> list[dict]:
    """What Tune's controller does with a searcher, one trial at a time; `rows` (the results
    table) gets each finished trial, as the runner's callback would record it."""
    done = []
    for i in range(budget):
        cfg = searcher.suggest(f"tune{i}")
        if cfg == StudySearcher.FINISHED:
            break
        trial = cfg["trial"]
        result = {"final": True, "accuracy": score(trial["config"])}
        searcher.on_trial_complete(f"tune{i}", result)
        if rows is not None:
            rows[trial["trial_id"]] = {"trial_id": trial["trial_id"], "status": "completed", **trial["params"], **result}
        done.append({**trial, **result})
    return done


def regret(sampler: str, seed: int, budget: int = 30) -> float:
    s = study_of(doc(sampler=sampler, num_samples=budget, seed=seed))
    found = play_tune(StudySearcher(s, {}, lambda t: t.to_ray()), budget, objective)
    assert len(found) == budget
    return 1 - max(f["accuracy"] for f in found)


def test_tpe_finds_a_known_optimum_better_than_random_in_the_same_budget():
    # Same budget (30), same seeds, real Optuna through Tune's OptunaSearch; the objective is a
    # closed form of the trial config. Over six seeds TPE must get closer to the optimum than
    # random search in most of them and by a wide margin in the median (measured here: TPE's
    # median regret ~7e-4, random's ~9e-3).
    seeds = range(6)
    tpe = [regret("tpe", s) for s in seeds]
    rnd = [regret("random", s) for s in seeds]
    wins = sum(t < r for t, r in zip(tpe, rnd))
    assert wins >= 4, (tpe, rnd)
    assert sorted(tpe)[3] < 0.5 * sorted(rnd)[3], (tpe, rnd)


def test_a_proposal_already_recorded_is_not_run_again_and_its_result_is_told_back():
    # A 2 x 2 categorical space has four trials; a budget of 10 cannot run more than four.
    space = "  train.batch_size: {grid: [16, 32]}\n  train.optimizer.lr: {choice: [0.01, 0.1]}"
    s = study_of(doc(space, sampler="tpe", num_samples=10, seed=0))
    rows: dict = {}
    searcher = StudySearcher(s, rows, lambda t: t.to_ray())
    ran = play_tune(searcher, 10, lambda c: c["train"]["optimizer"]["lr"] * c["train"]["batch_size"], rows)
    ids = [r["trial_id"] for r in ran]
    assert len(ids) == len(set(ids)) == 4
    # Each trial id is the one the plain expansion of the same space gives.
    grid = study_of(doc(space.replace("choice", "grid")))
    assert set(ids) == {t.trial_id for t in grid.trials}
    assert searcher.exhausted and searcher.reused > 0
    # Optuna was told every outcome, the re-proposals included.
    told = searcher.inner._ot_study.trials
    assert len(told) == 4 + searcher.reused
    assert all(t.value is not None for t in told)


def test_categories_that_are_mappings_travel_through_optuna_as_text():
    space = ("  train.method: {choice: [{name: natural}, {name: pgd_at, eps: 0.1, steps: 2}]}\n"
             "  train.optimizer.lr: {uniform: [0.01, 0.1]}")
    s = study_of(doc(space, sampler="random", num_samples=6, seed=1))
    searcher = StudySearcher(s, {}, lambda t: t.to_ray())
    ran = play_tune(searcher, 6, lambda c: 1.0 if c["train"]["method"]["name"] == "natural" else 0.0)
    methods = {r["config"]["train"]["method"]["name"] for r in ran}
    assert methods == {"natural", "pgd_at"}
    codec = Codec(searched_entries(s.spec.space, s.file))
    for r in ran:   # a results-table row (mappings as JSON) decodes back to the same trial
        row = {k: json.dumps(v, sort_keys=True) if isinstance(v, dict) else v for k, v in r["params"].items()}
        assert trial_from_values(s, codec.decode(row)).trial_id == r["trial_id"]


def test_two_objectives_with_nsga2_and_a_stopped_trial():
    text = doc(sampler="nsga2", num_samples=8, seed=0).replace(
        '"metric": "accuracy", "mode": "max"', '"metric": ["accuracy", "num_params"], "mode": ["max", "min"]')
    s = study_of(text)
    searcher = StudySearcher(s, {}, lambda t: t.to_ray())
    cfg = searcher.suggest("stopped")
    searcher.on_trial_complete("stopped", {"epoch": 1, "loss": 2.0})   # no final report: stopped early
    for i in range(5):
        cfg = searcher.suggest(f"t{i}")
        searcher.on_trial_complete(f"t{i}", {"final": True, "accuracy": objective(cfg["trial"]["config"]),
                                             "num_params": 100 + i})
    states = [t.state.name for t in searcher.inner._ot_study.trials]
    assert states.count("COMPLETE") == 5 and states[0] in ("PRUNED", "FAIL")
    assert searcher.inner._ot_study.best_trials


def test_a_re_run_continues_the_search_from_the_recorded_trials(tmp_path):
    text = doc(sampler="tpe", num_samples=5, seed=3)
    s = study_of(text)
    out = tmp_path / "s"
    store = ResultStore(out)
    # Three trials recorded by an earlier run (one stopped early), and one of another base.
    done = [trial_from_values(s, {"train.optimizer.lr": lr, "train.optimizer.momentum": 0.5}) for lr in (0.001, 0.01, 0.1)]
    for t, status in zip(done, ("completed", "completed", "stopped")):
        store.record(t.to_ray(), status, {"accuracy": objective(t.config)} if status == "completed" else None)
    other = study_of(text.replace("batch_size: 16", "batch_size: 64"))
    store.record(trial_from_values(other, {"train.optimizer.lr": 0.05, "train.optimizer.momentum": 0.1}).to_ray(),
                 "completed", {"accuracy": 0.9})
    # One more started and was cut off (its Tune folder exists, its row does not).
    cut = trial_from_values(s, {"train.optimizer.lr": 0.02, "train.optimizer.momentum": 0.8})
    (out / "tune-20250101-000000" / cut.trial_id).mkdir(parents=True)
    (out / "tune-20250101-000000" / cut.trial_id / "params.json").write_text(json.dumps({"trial": cut.to_ray()}))

    run = SearchRun(s, Layout(out), store.rows)
    assert {t.trial_id for t, _ in run.points} == {t.trial_id for t in done}
    assert run.remaining == 2 and [t.trial_id for t in run.pending] == [cut.trial_id]
    searcher = run.make_searcher(lambda t: t.to_ray())
    told = [t.state.name for t in searcher.inner._ot_study.trials]
    assert told == ["WAITING", "COMPLETE", "COMPLETE", "PRUNED"]   # the cut-off one is enqueued
    first = searcher.suggest("x")
    assert first["trial"]["trial_id"] == cut.trial_id   # the cut-off trial goes first (it resumes)
    assert {t.trial_id for t in run.trials()} == {t.trial_id for t in done} | {cut.trial_id}


def test_searched_and_expanded_trials_share_their_ids():
    s = study_of(doc("  train.optimizer.lr: {grid: [0.01, 0.1]}\n  train.epochs: 1\n  tag: hello"))
    for t in s.trials:
        again = trial_from_values(s, {"train.optimizer.lr": t.config["train"]["optimizer"]["lr"]})
        assert again.trial_id == t.trial_id and again.params == t.params


def test_tune_and_tracking_sections_do_not_change_trial_ids():
    plain = study_of(doc("  train.optimizer.lr: {grid: [0.01, 0.1]}", epochs=3))
    sections = ("  scheduler: {name: asha, metric: val_accuracy, mode: max, grace_period: 1}\n"
                "  max_concurrent: 1\n")
    tuned = study_of(doc("  train.optimizer.lr: {grid: [0.01, 0.1]}", sections, epochs=3)
                     + "tracking: {tensorboard: true, mlflow: true, wandb: {mode: offline}}\n")
    assert [t.trial_id for t in tuned.trials] == [t.trial_id for t in plain.trials]
    assert tuned.spec.tracking.mlflow is not None and tuned.spec.tracking.wandb.mode == "offline"


def test_smoke_shrinks_the_search_budget(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text(doc(sampler="tpe", num_samples=24))
    assert load_study(f, smoke=True).spec.tune.search.num_samples == 2
    assert load_study(f).spec.tune.search.num_samples == 24


def test_plan_and_validate_say_the_search_proposes_the_trials(tmp_path, capsys):
    f = tmp_path / "s.yaml"
    f.write_text(doc(sampler="tpe", num_samples=24))
    assert main(["plan", str(f)]) == 0
    assert "proposes up to 24 trials" in capsys.readouterr().out


def _tune_trials(study):
    from ray.tune.experiment import Trial
    return [Trial("trainable", config={"trial": t.to_ray()}, stub=True) for t in study.trials]


@pytest.mark.parametrize("name", ["asha", "median"])
def test_schedulers_stop_the_worse_trial_but_never_after_its_last_epoch(name):
    from ray.tune.schedulers import TrialScheduler
    from raystudy.tuneopts import make_scheduler
    opts = "reduction_factor: 2" if name == "asha" else "min_samples_required: 1"
    sched = f"  scheduler: {{name: {name}, metric: val_accuracy, mode: max, grace_period: 1, {opts}}}\n"
    s = study_of(doc("  train.optimizer.lr: {grid: [0.1, 0.01, 0.001]}", sched, epochs=2))
    scheduler = make_scheduler(s)
    good, bad, late = _tune_trials(s)
    for t in (good, bad, late):
        scheduler.on_trial_add(None, t)

    def report(t, epoch, acc):
        return scheduler.on_trial_result(None, t, {"epoch": epoch, "val_accuracy": acc, "training_iteration": epoch})

    assert report(good, 1, 0.9) == TrialScheduler.CONTINUE
    assert report(good, 2, 0.95) == TrialScheduler.CONTINUE
    assert report(bad, 1, 0.1) == TrialScheduler.STOP            # below the others at epoch 1
    assert report(late, 1, 0.92) == TrialScheduler.CONTINUE
    assert report(late, 2, 0.05) == TrialScheduler.CONTINUE      # worse, but its training is done
    # The final report (metrics, no epoch) is not the schedulers' business.
    assert scheduler.on_trial_result(None, late, {"accuracy": 0.5, "training_iteration": 3}) == TrialScheduler.CONTINUE


# ----------------------------------------------------------------------------- through Ray

def _tables(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out / TRIALS).set_index("trial_id")


@pytest.mark.slow   # real Ray trials
def test_a_search_runs_through_ray_and_a_re_run_continues_it(ray_local, tmp_path, capsys):
    f = tmp_path / "s.yaml"
    space = "  train.optimizer.lr: {loguniform: [0.001, 0.1]}\n  train.batch_size: {choice: [16, 32]}"
    f.write_text(doc(space, "  max_concurrent: 1\n", name="srch", opt="adam", sampler="tpe", num_samples=2, seed=0))
    res = tmp_path / "res"
    assert main(["run", str(f), "--results", str(res), "--no-dashboard"]) == 0
    printed = capsys.readouterr().out
    assert "0 of 2 trials recorded" in printed and "2/2 trials completed" in printed and "best: " in printed
    first = _tables(res / "srch")
    assert len(first) == 2 and (first["status"] == "completed").all()
    assert first["train.optimizer.lr"].between(0.001, 0.1).all()
    # The budget grows by one: the two recorded trials are told to the searcher, one new runs.
    assert main(["run", str(f), "--results", str(res), "--no-dashboard", "--set", "tune.search.num_samples=3"]) == 0
    printed = capsys.readouterr().out
    assert "2 of 3 trials recorded, 1 to propose" in printed
    again = _tables(res / "srch")
    assert len(again) == 3 and (again["runs"] == 1).all()
    plan = json.loads((res / "srch" / "study.json").read_text())
    assert {t["trial_id"] for t in plan["trials"]} == set(again.index)
    assert main(["status", str(res / "srch")]) == 0
    assert "3 trials: 3 completed" in capsys.readouterr().out


@pytest.mark.slow   # real Ray trials
def test_a_search_cut_off_by_ctrl_c_continues_where_it_stopped(ray_local, tmp_path, monkeypatch):
    from raystudy.runner import StudyInterrupted, run_study
    f = tmp_path / "s.yaml"
    f.write_text(doc("  train.optimizer.lr: {loguniform: [0.001, 0.1]}", "  max_concurrent: 1\n", name="cut",
                     epochs=3, opt="adam", sampler="tpe", num_samples=2, seed=0))
    monkeypatch.setenv("RAYSTUDY_FAULT", "driver-sigint@2")   # once one trial is done, Ctrl-C at epoch 2
    with pytest.raises(StudyInterrupted):
        run_study(load_study(f), tmp_path / "res", dashboard=False, verbose=False)
    monkeypatch.delenv("RAYSTUDY_FAULT")
    assert len(_tables(tmp_path / "res" / "cut")) == 1
    s = run_study(load_study(f), tmp_path / "res", dashboard=False, verbose=False)
    t = _tables(s.out)
    assert len(t) == 2 and (t["status"] == "completed").all()
    assert sorted(t["resumed_from_epoch"]) == [0, 2]   # the cut-off trial resumed, not restarted
    assert (s.completed, s.resumed) == (2, 1)


@pytest.mark.slow   # real Ray trials
def test_asha_stops_the_hopeless_trial_and_it_is_never_re_run(ray_local, tmp_path, capsys):
    # Adam at 1e-2 learns the synthetic quadrants within an epoch; at 1e-9 it stays at chance.
    # One trial at a time, the good one first: at the first rung the hopeless one is below the
    # cutoff (the median of what the rung has seen) and is stopped after epoch 1.
    f = tmp_path / "a.yaml"
    sched = "  scheduler: {name: asha, metric: val_accuracy, mode: max, grace_period: 1, reduction_factor: 2}\n"
    f.write_text(doc("  train.optimizer.lr: {grid: [0.01, 1.0e-9]}", sched + "  max_concurrent: 1\n",
                     name="asha", epochs=3, opt="adam", train_size=256))
    res = tmp_path / "res"
    assert main(["run", str(f), "--results", str(res), "--no-dashboard"]) == 0
    printed = capsys.readouterr().out
    assert "1/2 trials completed, 1 stopped early, 0 failed" in printed
    t = _tables(res / "asha").set_index("train.optimizer.lr")
    assert t.loc[0.01, "status"] == "completed" and t.loc[0.01, "epochs_run"] == 3
    assert t.loc[1e-9, "status"] == "stopped" and t.loc[1e-9, "stopped_at_epoch"] == 1
    assert pd.isna(t.loc[1e-9, "accuracy"]) and pd.isna(t.loc[1e-9, "error"])
    epochs = pd.read_parquet(res / "asha" / "epochs.parquet")
    assert sorted(epochs.groupby("trial_id").size()) == [1, 3]
    # A re-run records nothing new: stopped is an outcome, not a failure to retry.
    assert main(["run", str(f), "--results", str(res), "--no-dashboard", "--retry-failed"]) == 0
    assert "0 to run, 2 already recorded" in capsys.readouterr().out
    assert (_tables(res / "asha")["runs"] == 1).all()
    assert main(["status", str(res / "asha")]) == 0
    assert "1 completed, 1 stopped early, 0 failed" in capsys.readouterr().out
    # The tables rebuilt from Tune's folders know it was stopped (not cut off by Ctrl-C).
    (res / "asha" / TRIALS).unlink()
    assert main(["collect", str(res / "asha")]) == 0
    rebuilt = _tables(res / "asha").set_index("train.optimizer.lr")
    assert rebuilt.loc[1e-9, "status"] == "stopped" and rebuilt.loc[1e-9, "stopped_at_epoch"] == 1
    assert rebuilt.loc[0.01, "status"] == "completed"
