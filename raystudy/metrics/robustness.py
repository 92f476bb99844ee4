"""Robustness profiles: accuracy, consistency and fooling rate under an attack, per ε.

The robustness profile of the invariance-vs-robustness and spatial-vs-adversarial
papers (Kamath et al.). Per ε, with A(x, t) the attack pushing x away from label t:

* `accuracy` = Pr(f(x + A(x, y)) = y), the attack aimed at the true label;
* `consistency` = Pr(f(x + A(x, y)) = f(x)): the same attacked inputs, compared with the
  model's clean prediction (a misclassified input that the label attack leaves alone counts
  as consistent);
* `fooling_rate` = Pr(f(x + A(x, f(x))) ≠ f(x)), the papers' definition (CuSP paper, Sec. 2):
  the attack aimed at the model's own clean prediction; `not_fooled` = 1 − fooling_rate is
  what the papers plot, so that every curve starts at 1 (supplementary Fig. 7 shows accuracy
  beside it). The two attacks are the same where the model is right, so only misclassified
  inputs are attacked a second time.

The CuSP table's adversarial accuracy is the scalar `robustness.<name>.acc@8/255` (or at any
declared ε, see `acc_at`). A PGD profile states its step size: curve column `alpha` (the step
at that ε) and the text column `robustness.<name>.alpha_rule` in trials.parquet ("given", or
"2.5*eps/steps": Madry et al.'s rule, used when the study gives no `alpha`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from ..attacks import attack, attack_options, attack_parameters, get_attack, perturbation_norm, pgd_step
from ..errors import StudyError
from ..registry import ATTACKS, METRICS
from ..spec.types import Number
from ..stats import PROPORTIONS
from .base import Metric, MetricOptions, MetricResult, Run
from .health_checks import add_cummin, profile_checks


def eps_label(e: float) -> str:
    """Readable ε for a scalar's name: '0.3', '8/255', else 4 significant digits."""
    if abs(round(e, 3) - e) < 1e-12:
        return f"{round(e, 3):g}"
    k = e * 255
    if abs(k - round(k)) < 1e-6:
        return f"{int(round(k))}/255"
    return f"{e:.4g}"


def normalized_auc(xs: list[float], ys: list[float]) -> float:
    """Trapezoidal area under ys(xs) divided by the x range (the mean height);
    a single point gives its own value."""
    pts = sorted(zip(xs, ys))
    if len(pts) == 1 or pts[-1][0] == pts[0][0]:
        return float(pts[0][1])
    area = sum((x1 - x0) * (y0 + y1) / 2 for (x0, y0), (x1, y1) in zip(pts, pts[1:]))
    return float(area / (pts[-1][0] - pts[0][0]))


class RobustnessOptions(MetricOptions):
    """Options of `robustness`. ε is in pixel units of inputs in [0, 1] ('8/255' works);
    for L2 attacks it is an L2 radius. Attack hyperparameters left out take the
    defaults of the attack's options in raystudy.attacks (PGD: 10 steps of 2.5·ε/steps,
    random start). `seed` also seeds the attack's random start."""

    attack: str = "pgd"
    eps: list[Number] = Field(default_factory=lambda: [0.0, 2 / 255, 4 / 255, 8 / 255, 16 / 255],
                              min_length=1)
    # Scalars `acc@<ε>`; these ε are evaluated too. Default: the CuSP table's 8/255.
    acc_at: list[Number] | None = None
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_]+$")
    # Attack hyperparameters (each applies to some attacks only: the attack's options class).
    steps: int | None = Field(None, ge=1)
    alpha: Number | None = Field(None, gt=0)
    random_start: bool | None = None
    restarts: int | None = Field(None, ge=1)
    overshoot: float | None = Field(None, ge=0)
    candidates: int | None = Field(None, ge=2)
    c: float | None = Field(None, gt=0)
    kappa: float | None = Field(None, ge=0)
    lr: float | None = Field(None, gt=0)
    version: Literal["standard", "plus", "rand"] | None = None
    norm: Literal["Linf", "L2"] | None = None

    @field_validator("attack")
    @classmethod
    def _known(cls, v):
        try:
            get_attack(v)
        except StudyError as e:
            raise ValueError(e.raw + (f" ({e.hint})" if e.hint else "")
                             + "; one of: " + ", ".join(ATTACKS.names())) from None
        return v

    @model_validator(mode="after")
    def _fits_attack(self):
        info = get_attack(self.attack)
        hp = [k for k in attack_parameters() if k in self.model_fields_set and getattr(self, k, None) is not None]
        wrong = [k for k in hp if k not in info.params]
        if wrong:
            ok = ", ".join(info.params) or "none"
            raise ValueError(f"option(s) {', '.join(wrong)} do not apply to attack '{self.attack}' "
                             f"(its options: {ok})")
        norm = self.norm or info.norm
        for e in list(self.eps) + list(self.acc_at or []):
            if e < 0 or (norm == "Linf" and e > 1):
                raise ValueError(f"ε {e} is outside {'[0, 1]' if norm == 'Linf' else '[0, ∞)'} for the "
                                 f"{norm} attack '{self.attack}' (pixel units: write 8/255 for 8/255)")
        return self

    @property
    def label(self) -> str:
        return self.name or self.attack


def _budget_rows(run: Run, o: RobustnessOptions, epss: list[float], clean, hp: dict,
                 fooled: dict | None = None) -> dict:
    """(accuracy, consistency) per ε for an attack that takes a budget: one run per ε; the
    papers' fooling rate per ε goes into `fooled`."""
    rows = {}
    for e in epss:
        if e == 0:
            # A zero budget leaves every input unchanged; skip the attack's cost.
            pred = clean
        else:
            adv = attack(run.model, o.attack, run.x, run.y, e, batch_size=run.batch_size, seed=o.seed, **hp)
            pred = run.predict(adv)
        rows[e] = run.rates(f"robustness.{o.label}", e, pred, clean)
        if fooled is not None:
            fooled[e] = 0.0 if e == 0 else (retarget(run, o, hp, pred, clean, eps=e)[0] != clean).float().mean().item()
    return rows


def _minimal_rows(run: Run, o: RobustnessOptions, epss: list[float], clean, hp: dict, norm: str,
                  fooled: dict | None = None) -> dict:
    """(accuracy, consistency) per ε for a minimal-perturbation attack, run once: an input
    is broken at ε when its perturbation's norm is at most ε; the papers' fooling rate per ε
    goes into `fooled`."""
    adv = attack(run.model, o.attack, run.x, run.y, batch_size=run.batch_size, seed=o.seed, **hp)
    pred = run.predict(adv)
    size = perturbation_norm(adv - run.x, norm)
    own, own_size = retarget(run, o, hp, pred, clean, size=size, norm=norm)
    rows = {}
    for e in epss:
        within = size <= e
        rows[e] = run.record(f"robustness.{o.label}", e, (clean == run.y) & ~(within & (pred != run.y)),
                             ~(within & (pred != clean)))
        if fooled is not None:
            fooled[e] = ((own_size <= e) & (own != clean)).float().mean().item()
    return rows


def retarget(run: Run, o: RobustnessOptions, hp: dict, pred, clean, *, eps: float | None = None,
             size=None, norm: str | None = None):
    """Predictions (and, for a minimal attack, perturbation norms) under the attack aimed at the
    model's own clean prediction instead of the label, from those of the label attack (`pred`,
    `size`): the two attacks coincide where the model is right, so only the misclassified
    inputs are attacked again, with their clean prediction as the label."""
    wrong = (clean != run.y).nonzero().squeeze(1)
    if wrong.numel() == 0:
        return pred, size
    adv = attack(run.model, o.attack, run.x[wrong], clean[wrong], eps, batch_size=run.batch_size,
                 seed=o.seed, **hp)
    pred = pred.clone()
    pred[wrong] = run.predict(adv)
    if size is not None:
        size = size.clone()
        size[wrong] = perturbation_norm(adv - run.x[wrong], norm)
    return pred, size


def step_rule(o: RobustnessOptions, hp: dict, epss: list[float]) -> tuple[str | None, dict]:
    """(`alpha_rule` text, {ε: step size}) of an attack that takes a step size (PGD); (None, {})
    for the others."""
    if "alpha" not in get_attack(o.attack).params:
        return None, {}
    opts = attack_options(o.attack, **hp)
    rule = "given" if opts.alpha is not None else "2.5*eps/steps"
    return rule, {e: float(pgd_step(e, opts)) for e in epss}


def _acc_at(o: RobustnessOptions, norm: str) -> list[float]:
    """The ε of the `acc@<ε>` scalars: the declared ones, else the CuSP table's 8/255 (none
    for an L2 attack, where 8/255 is no budget)."""
    if o.acc_at is not None:
        return list(o.acc_at)
    return [] if norm == "L2" else [8 / 255]


class Robustness(Metric):
    """Robustness profile (Kamath et al., invariance vs robustness; CuSP Sec. 2 and 4):
    per ε, accuracy and consistency under the attack on the true label, and the papers'
    fooling rate (the attack on the model's own prediction; `not_fooled` = 1 − it), on a
    fixed seeded subset. Budget attacks run once per ε; minimal-perturbation attacks
    (DeepFool, CW) run once and an input is broken at ε when its perturbation's norm
    is at most ε. Scalars: `auc` (mean accuracy over the ε range), `consistency_auc`,
    `not_fooled_auc`, `acc@<ε>`; PGD adds the note `alpha_rule`."""

    # Curve columns that are proportions of the subset (for Wilson intervals).
    proportions = PROPORTIONS + ("not_fooled",)
    fast_path = True    # attacks and forward passes only: may run under eval_amp / eval_compile

    def compute(self, run: Run, o: RobustnessOptions) -> MetricResult:
        info = get_attack(o.attack)
        norm = o.norm or info.norm
        acc_at = _acc_at(o, norm)
        epss = sorted({float(e) for e in list(o.eps) + acc_at})
        hp = {k: getattr(o, k) for k in attack_parameters() if getattr(o, k, None) is not None}
        clean = run.predict()
        fooled: dict = {}
        if info.budget:
            rows = _budget_rows(run, o, epss, clean, hp, fooled)
        else:
            rows = _minimal_rows(run, o, epss, clean, hp, norm, fooled)
        res = MetricResult()
        key = f"robustness.{o.label}"
        x_title = "ε (L∞ pixel units)" if norm == "Linf" else "ε (L2)"
        rule, alphas = step_rule(o, hp, epss)
        for e in epss:
            acc, con = rows[e]
            res.curves.append({"metric": key, "x": e, "x_title": x_title, "accuracy": acc, "consistency": con,
                               "fooling_rate": fooled[e], "not_fooled": 1.0 - fooled[e],
                               **({"alpha": alphas[e], "alpha_rule": rule} if rule else {})})
        if rule:
            res.notes[f"{key}.alpha_rule"] = rule
        declared = sorted({float(v) for v in o.eps})
        res.scalars[f"{key}.auc"] = normalized_auc(declared, [rows[e][0] for e in declared])
        res.scalars[f"{key}.consistency_auc"] = normalized_auc(declared, [rows[e][1] for e in declared])
        res.scalars[f"{key}.not_fooled_auc"] = normalized_auc(declared, [1.0 - fooled[e] for e in declared])
        for e in acc_at:
            res.scalars[f"{key}.acc@{eps_label(float(e))}"] = rows[float(e)][0]
        add_cummin(res.curves)
        res.scalars.update(profile_checks(run, o, norm, rows, clean, hp))
        return res

    def outputs(self, o: RobustnessOptions):
        key = f"robustness.{o.label}"
        acc_at = _acc_at(o, o.norm or get_attack(o.attack).norm)
        return ([f"{key}.auc", f"{key}.consistency_auc", f"{key}.not_fooled_auc"]
                + [f"{key}.acc@{eps_label(float(e))}" for e in acc_at],
                [key])


robustness = METRICS.register("robustness", RobustnessOptions)(Robustness())
