"""Sampling uncertainty of proportions and the compact form of per-example outcomes.

Pure Python and numpy (no torch, no Ray), so the metrics, the results store and `analysis`
share it.

* `wilson(k, n)`: the Wilson score interval (Wilson 1927; Agresti & Coull 1998 recommend it
  over the Wald interval, which collapses to a point at k = 0 or k = n and undercovers for
  small n). Every curve row of a metric gets `n` and `<c>_lo` / `<c>_hi` for each of its
  proportion columns (`add_intervals`).
* `pack` / `unpack`: a boolean vector per evaluated image as np.packbits bytes (1,000 images
  take 125 bytes); `encode` / `decode` wrap those bytes in base64 text for JSON, which is how
  outcomes travel from a Ray worker to the driver inside the final result.
* `normalized_auc`: the area under a profile divided by its x range (the metrics' AUC scalars).
"""

from __future__ import annotations

import base64
import math
from typing import Iterable, Sequence

import numpy as np

Z95 = 1.959963984540054

# Curve value columns that are a fraction of the n evaluated images (a metric may name more).
PROPORTIONS = ("accuracy", "consistency", "fooling_rate")


def wilson(k, n, z: float = Z95):
    """Wilson score interval (lo, hi) of a proportion k/n; k and n may be numpy arrays and k may
    be fractional (a mean over trials). n = 0 gives (nan, nan): no images, no interval.
    k=0, n=10 -> (0, 0.2775); k=5, n=10 -> (0.2366, 0.7634)."""
    k = np.asarray(k, dtype=float)
    n = np.asarray(n, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = k / n
        denom = 1 + z * z / n
        center = (p + z * z / (2 * n)) / denom
        half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
        # At k = 0 (k = n) the bound is exactly 0 (1); rounding must not move it off.
        lo = np.where(k <= 0, 0.0, np.clip(center - half, 0.0, 1.0))
        hi = np.where(k >= n, 1.0, np.clip(center + half, 0.0, 1.0))
    lo, hi = np.where(n > 0, lo, np.nan), np.where(n > 0, hi, np.nan)
    if lo.ndim == 0:
        return float(lo), float(hi)
    return lo, hi


def add_intervals(row: dict, n: int, columns: Iterable[str] = PROPORTIONS) -> dict:
    """Set `n` and the 95% Wilson interval `<c>_lo`, `<c>_hi` of every proportion column c that
    the curve row holds as a number in [0, 1] (k = round(value · n): the value is a mean over
    exactly n images). Returns the row."""
    row.setdefault("n", int(n))
    n = int(row["n"])
    for c in columns:
        v = row.get(c)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 <= v <= 1:
            continue
        k = min(n, max(0, round(v * n)))
        row[f"{c}_lo"], row[f"{c}_hi"] = wilson(k, n)
    return row


# --------------------------------------------------------------------- outcomes

def pack(bits) -> bytes:
    """A boolean vector as np.packbits bytes (the length travels separately, as `n`)."""
    return np.packbits(np.asarray(bits, dtype=bool)).tobytes()


def unpack(data: bytes, n: int) -> np.ndarray:
    """The boolean vector of length n that `pack` stored in `data`."""
    if not 0 <= n <= 8 * len(data):
        raise ValueError(f"{len(data)} bytes hold at most {8 * len(data)} outcomes, not {n}")
    return np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=n).astype(bool)


def encode(bits) -> str:
    """pack, then base64 text (for JSON)."""
    return base64.b64encode(pack(bits)).decode("ascii")


def decode(text: str) -> bytes:
    """The packed bytes of `encode`'s text."""
    return base64.b64decode(text.encode("ascii"))


# --------------------------------------------------------------------- profiles

def normalized_auc(xs: Sequence[float], ys) -> float | np.ndarray:
    """Trapezoidal area under ys(xs) divided by the x range (the mean height); one point gives
    its own value. ys may be a (..., len(xs)) array: one area per leading index."""
    xs = np.asarray(xs, dtype=float)
    ys = np.asarray(ys, dtype=float)
    order = np.argsort(xs, kind="stable")
    xs, ys = xs[order], ys[..., order]
    if len(xs) == 1 or xs[-1] == xs[0]:
        out = ys[..., 0]
    else:
        out = ((np.diff(xs) * (ys[..., 1:] + ys[..., :-1]) / 2).sum(-1)) / (xs[-1] - xs[0])
    return float(out) if np.ndim(out) == 0 else out
