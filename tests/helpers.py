"""Shared test helpers (not fixtures): small trained models for metric tests."""

import torch
import torch.nn.functional as F

from raystudy.registry import MODELS


def train_stdcnn(data, epochs: int = 1, seed: int = 0):
    """The default StdCNN trained with Adam on `data.x_train` (a few seconds on 1,000 digits)."""
    torch.manual_seed(seed)
    entry = MODELS.get("stdcnn_mnist")
    model = entry.obj(entry.schema(), data.info)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    for _ in range(epochs):
        perm = torch.randperm(len(data.x_train))
        for i in range(0, len(perm), 50):
            idx = perm[i:i + 50]
            loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def run_metric(metric: str, model, data, /, **opts):
    """One registered metric on `model` and `data` (CPU), options validated as in a study file
    (positional-only, so an option may itself be called `name`)."""
    from raystudy.metrics import EvalContext
    from raystudy.registry import METRICS
    entry = METRICS.get(metric)
    return entry.obj(EvalContext(model, data, torch.device("cpu")), entry.schema.model_validate(opts))


def record_trials(out, configs: dict, params: dict | None = None):
    """A recorded results folder without Ray: each {trial_id: config} trained and evaluated by
    raystudy.execute.run_trial and recorded by the ResultStore, as the driver would."""
    from raystudy.data import load
    from raystudy.execute import run_trial
    from raystudy.results import ResultStore
    from raystudy.spec.validate import validate_trial
    store = ResultStore(out)
    for tid, cfg in configs.items():
        trial = {"trial_id": tid, "params": (params or {}).get(tid, {}), "config": cfg}
        final = run_trial(trial, load(validate_trial(cfg).cfg.data))
        store.record(trial, "completed", final)
    return out


def assert_uncertainty_contract(res) -> None:
    """What the metric template promises about a MetricResult's uncertainty: every curve row with
    a proportion column has its n and 95% Wilson interval, and every row with an `accuracy` (a
    fraction of a subset's images) has per-example outcomes whose means are the row's values."""
    import pytest

    from raystudy.stats import PROPORTIONS, wilson
    points = {}
    for oc in res.outcomes:
        assert set(oc) == {"metric", "x", "correct", "consistent", "examples"}, oc
        assert oc["correct"].dtype == torch.bool and oc["correct"].ndim == 1
        assert oc["consistent"] is None or oc["consistent"].shape == oc["correct"].shape
        assert isinstance(oc["examples"], str) and len(oc["examples"]) == 16
        points[(oc["metric"], oc["x"])] = oc
    for row in res.curves:
        props = [c for c in PROPORTIONS if isinstance(row.get(c), float)]
        for c in props:
            n = row["n"]
            assert row[f"{c}_lo"] <= row[c] <= row[f"{c}_hi"]
            assert (row[f"{c}_lo"], row[f"{c}_hi"]) == pytest.approx(wilson(round(row[c] * n), n))
        if "accuracy" in props:
            oc = points.get((row["metric"], float(row["x"])))
            assert oc is not None, f"curve point {row['metric']}@{row['x']} has no per-example outcomes"
            assert len(oc["correct"]) == row["n"]
            assert oc["correct"].float().mean().item() == row["accuracy"]
            if "consistency" in props:
                assert oc["consistent"].float().mean().item() == row["consistency"]


def assert_health_recorded(trials) -> None:
    """Every completed trial was judged (raystudy.health): a verdict and the training checks'
    values; a robustness profile adds its own checks."""
    assert trials["health.ok"].notna().all() and trials["health.flags"].notna().all()
    assert trials["health.did_not_learn_loss_ratio"].notna().all()
    for col in [c for c in trials.columns if c.startswith("robustness.") and c.endswith(".auc")]:
        if col.startswith(("robustness.pgd", "robustness.fgsm")):
            assert trials[f"health.{col[:-4]}.zero_grad_fraction"].notna().all(), col
