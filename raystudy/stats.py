"""Small statistics shared by raystudy and analysis (pure Python / numpy; no torch, no Ray).

Minimal version written by the `claims` helper so that its code runs before the
`uncertainty` helper's module lands (WAVE2.md names this module and `wilson`); the lead
keeps whichever is complete.
"""

from __future__ import annotations

import math


def wilson(k: float, n: float, z: float = 1.96) -> tuple[float, float]:
    """95% (z = 1.96) Wilson score interval of a proportion k / n (Wilson 1927); (nan, nan)
    when n is 0."""
    if n <= 0:
        return float("nan"), float("nan")
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)
