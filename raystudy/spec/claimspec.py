"""The grammar of a study's `claims:` section: what a paper claims, declared so that every run of
the study ends with a verdict (computed from the results folder by analysis/claims.py).

    claims:
      - name: adversarial_training_raises_robustness
        about: PGD-AT raises PGD accuracy (Madry et al.)     # optional, shown beside the verdict
        compare:
          metric: robustness.pgd.auc         # a scalar column, a curve point (robustness.pgd@0.1[:col])
          a: {train.method.name: pgd_at}     # dotted paths (varied or fixed) -> a value or a list of values
          b: {train.method.name: natural}
          expect: greater                    # greater | less | equal (equal needs margin)
      - name: rotation_augmentation_lowers_pgd_accuracy
        trend:
          metric: robustness.pgd.acc@0.1
          over: train.augment.rotation       # a numeric axis
          expect: decreasing                 # increasing | decreasing | flat (flat needs margin)
          within: {model.arch: stdcnn_mnist}

`compare` also takes `within` (a selection both groups share) and `versus` (group b's metric,
to compare two metrics of the same trials, e.g. an attack against its random baseline);
`trend` takes `stat` (spearman, kendall or change). Claims are study-level: they never enter a
trial's config or id. This module holds the schema and value matching only (no torch, no Ray):
the checks against the plan are in raystudy/spec/claims.py.
"""

from __future__ import annotations

import math
import numbers
from fractions import Fraction
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Selector = dict[str, Any]


class _Claim(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class CompareSpec(_Claim):
    """Group a against group b on one metric, paired on every other independent axis."""

    metric: str = Field(min_length=1)
    versus: str | None = Field(None, min_length=1, description="group b's metric (default: metric)")
    a: Selector = Field(default_factory=dict)
    b: Selector = Field(default_factory=dict)
    within: Selector = Field(default_factory=dict, description="a selection both groups share")
    expect: Literal["greater", "less", "equal"]
    margin: float | None = Field(None, gt=0, description="equal: |a − b| within ±margin")

    @model_validator(mode="after")
    def _check(self):
        if self.expect == "equal" and self.margin is None:
            raise ValueError("expect: equal needs a margin (e.g. margin: 0.02): equal within what?")
        if self.expect != "equal" and self.margin is not None:
            raise ValueError(f"margin applies to expect: equal only (not {self.expect})")
        if self.a == self.b and (self.versus is None or self.versus == self.metric):
            raise ValueError("a and b select the same trials on the same metric: give a and b different "
                             "selections, or a second metric as versus")
        return self

    @property
    def b_metric(self) -> str:
        return self.versus or self.metric


class TrendSpec(_Claim):
    """A monotone relation between a metric and a numeric axis, within each group of the others."""

    metric: str = Field(min_length=1)
    over: str = Field(min_length=1)
    within: Selector = Field(default_factory=dict)
    expect: Literal["increasing", "decreasing", "flat"]
    margin: float | None = Field(None, gt=0, description="flat: the statistic within ±margin")
    stat: Literal["spearman", "kendall", "change"] | None = Field(
        None, description="per group: Spearman's rho, Kendall's tau-b, or the least-squares change of the "
                          "metric over the axis' range (default: change for flat, spearman otherwise)")

    @model_validator(mode="after")
    def _check(self):
        if self.expect == "flat" and self.margin is None:
            raise ValueError("expect: flat needs a margin (e.g. margin: 0.05, in the metric's units with "
                             "the default stat: change)")
        if self.expect != "flat" and self.margin is not None:
            raise ValueError(f"margin applies to expect: flat only (not {self.expect})")
        if self.over in self.within:
            raise ValueError(f"'{self.over}' is both the trend's axis (over) and fixed by within")
        return self

    @property
    def statistic(self) -> str:
        return self.stat or ("change" if self.expect == "flat" else "spearman")


class ClaimSpec(_Claim):
    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
    about: str = Field("", description="the paper's sentence, shown beside the verdict")
    compare: CompareSpec | None = None
    trend: TrendSpec | None = None

    @model_validator(mode="after")
    def _one(self):
        if (self.compare is None) == (self.trend is None):
            raise ValueError("a claim is exactly one of compare: {...} or trend: {...}")
        return self

    @property
    def kind(self) -> str:
        return "compare" if self.compare is not None else "trend"

    @property
    def body(self) -> CompareSpec | TrendSpec:
        return self.compare if self.compare is not None else self.trend


# ------------------------------------------------------------------------------ values

def as_number(v: Any) -> float | None:
    """A real number from a table cell or a study value ('8/255' and '0.1' included); None for
    anything else (labels, booleans, lists)."""
    if isinstance(v, bool) or type(v).__name__ == "bool_":
        return None
    if isinstance(v, numbers.Real):
        f = float(v)
        return f if math.isfinite(f) else None
    if isinstance(v, str):
        try:
            f = float(Fraction(v.strip())) if "/" in v else float(v)
        except (ValueError, ZeroDivisionError):
            return None
        return f if math.isfinite(f) else None
    return None


def matches(value: Any, wanted: Any) -> bool:
    """Whether a trial's value is the selected one: a list selects any of its values; numbers
    compare with a relative tolerance (2/255 written either way), everything else as text."""
    if isinstance(wanted, list):
        return any(matches(value, w) for w in wanted)
    if isinstance(value, bool) or isinstance(wanted, bool):
        return str(value).lower() == str(wanted).lower()
    a, b = as_number(value), as_number(wanted)
    if a is not None and b is not None:
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return str(value) == str(wanted)


def split_point(ref: str) -> tuple[str, str | None, str]:
    """'robustness.pgd@8/255:consistency' -> ('robustness.pgd', '8/255', 'consistency'); the last
    '@' splits, so a curve named 'hessian.top1@epoch' takes points too; no '@': (ref, None, '')."""
    body, _, col = ref.partition(":")
    metric, at, x = body.rpartition("@")
    if not at:
        return ref, None, ""
    return metric, x, col
