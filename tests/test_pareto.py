"""Pareto fronts: hand-built cases with known fronts, mixed directions, duplicates, NaN."""

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analysis.pareto import attainment, directions, non_dominated, pareto_front


def frame(points, names=("a", "b", "c")):
    return pd.DataFrame([dict(zip(names, p)) for p in points])


def test_two_objectives_max_max_front_and_layers():
    df = frame([(1, 5), (2, 4), (3, 3), (2, 2), (1, 1)], ("a", "b"))
    assert non_dominated(df, ["a", "b"]).tolist() == [True, True, True, False, False]
    att = attainment(df, ["a", "b"])
    assert att["rank"].tolist() == [1, 1, 1, 2, 3]
    assert att["dominated_by"].tolist() == [0, 0, 0, 2, 4]
    # eps_gap of (2,2): min over front of max_k(f_k - p_k) = min(3, 2, 1) = 1.
    assert att["eps_gap"].tolist() == [0, 0, 0, 1, 2]
    # Scaled to [0,1]: p=(0.5,0.25), nearest front point (2,4) -> (0.5,0.75) at distance 0.5.
    assert att.loc[3, "distance"] == pytest.approx(0.5)
    assert att.loc[:2, "distance"].tolist() == [0, 0, 0]


def test_mixed_directions_accuracy_up_time_down():
    df = pd.DataFrame({"acc": [0.9, 0.8, 0.85, 0.7], "time": [10, 5, 20, 5]})
    on = non_dominated(df, {"acc": "max", "time": "min"})
    # (0.85, 20) is beaten by (0.9, 10); (0.7, 5) ties on time and loses on accuracy.
    assert on.tolist() == [True, True, False, False]
    assert non_dominated(df, ["acc", "time"], minimize=["time"]).tolist() == on.tolist()
    # Flipping time's direction changes the answer: now slower is better.
    assert non_dominated(df, ["acc", "time"]).tolist() == [True, False, True, False]
    front = pareto_front(df, {"acc": "max", "time": "min"})
    assert front["acc"].tolist() == [0.9, 0.8]


def test_three_objectives_a_third_objective_breaks_a_tie():
    df = frame([(1, 1, 0), (1, 1, 1), (2, 0, 0), (0, 2, 0)])
    assert non_dominated(df, ["a", "b", "c"]).tolist() == [False, True, True, True]
    # On (a, b) alone the first two points are equal: both stay on the front.
    assert non_dominated(df, ["a", "b"]).tolist() == [True, True, True, True]
    # Minimizing c makes the first point the better of the pair.
    assert non_dominated(df, ["a", "b", "c"], minimize=["c"]).tolist() == [True, False, True, True]


def test_duplicates_share_their_status():
    df = frame([(3, 1), (3, 1), (1, 3), (1, 1), (1, 1)], ("a", "b"))
    att = attainment(df, ["a", "b"])
    assert att["on_front"].tolist() == [True, True, True, False, False]
    assert att["rank"].tolist() == [1, 1, 1, 2, 2]


def test_nan_rows_never_on_front_and_dominate_nothing():
    df = frame([(float("nan"), 100), (1, 2), (2, 1), (0.5, 0.5)], ("a", "b"))
    att = attainment(df, ["a", "b"])
    assert att["on_front"].tolist() == [False, True, True, False]
    assert math.isnan(att.loc[0, "rank"]) and math.isnan(att.loc[0, "distance"])
    assert att.loc[3, "dominated_by"] == 2


def test_directions_errors():
    with pytest.raises(ValueError, match="both maximized and minimized"):
        directions(["a"], maximize=["a"], minimize=["a"])
    with pytest.raises(ValueError, match="'max' or 'min'"):
        directions({"a": "up"})
    with pytest.raises(KeyError, match="no column"):
        non_dominated(frame([(1, 2)], ("a", "b")), ["zzz"])
    assert directions(["x", "y"], maximize=["z"], minimize=["y"]) == {"x": "max", "y": "min", "z": "max"}


def brute_front(m):
    n = len(m)
    return [not any(all(m[j][k] >= m[i][k] for k in range(len(m[i]))) and
                    any(m[j][k] > m[i][k] for k in range(len(m[i]))) for j in range(n)) for i in range(n)]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 4), st.integers(0, 4)), min_size=1, max_size=25),
       st.randoms(use_true_random=False))
def test_matches_brute_force_and_ignores_row_order(points, rnd):
    df = frame(points)
    flipped = [(a, b, -c) for a, b, c in points]
    got = non_dominated(df, ["a", "b", "c"], minimize=["c"]).tolist()
    assert got == brute_front(flipped)
    order = list(range(len(points)))
    rnd.shuffle(order)
    shuffled = non_dominated(df.iloc[order], ["a", "b", "c"], minimize=["c"])
    assert shuffled.sort_index().tolist() == got
    att = attainment(df, ["a", "b", "c"], minimize=["c"])
    # Layer 1 is the front; every dominated point has a positive gap and distance.
    assert (att["rank"] == 1).tolist() == got
    assert ((att["eps_gap"] > 0) == ~np.array(got)).all()
