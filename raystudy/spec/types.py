"""Value types shared by schemas: ε given as '8/255', angle ranges, etc."""

from __future__ import annotations

import math
import re
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator

_FRACTION = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*/\s*([0-9]*\.?[0-9]+)\s*$")


def parse_number(v):
    """Accept finite numbers and fraction strings such as '8/255' (the papers' ε notation)."""
    if isinstance(v, bool):
        raise ValueError("expected a number, got a boolean")
    if isinstance(v, (int, float)):
        return _finite(v)
    if isinstance(v, str):
        m = _FRACTION.match(v)
        if m:
            den = float(m.group(2))
            if den == 0:
                raise ValueError(f"'{v}' divides by zero")
            return _finite(float(m.group(1)) / den)
        try:
            return _finite(float(v))
        except ValueError as e:
            if "finite" in str(e):
                raise
            raise ValueError(f"'{v}' is not a number or a fraction like '8/255'") from None
    raise ValueError(f"expected a number or a fraction like '8/255', got {type(v).__name__}")


def _finite(v):
    # YAML reads .nan / .inf (and float() reads 'nan', 'inf', '1e999') as floats: none of
    # them is a learning rate, an ε or an angle.
    if isinstance(v, float) and not math.isfinite(v):
        raise ValueError(f"{v} is not a finite number (write a number such as 0.1, or a fraction like '8/255')")
    return v


def _unit(v: float) -> float:
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{v} is outside [0, 1] (pixel units: ε for 8/255 is written '8/255')")
    return v


def _angle(v: float) -> float:
    if not 0.0 <= v <= 180.0:
        raise ValueError(f"{v} is outside [0, 180] degrees")
    return v


Number = Annotated[float, BeforeValidator(parse_number)]
Eps = Annotated[float, BeforeValidator(parse_number), AfterValidator(_unit)]
Angle = Annotated[float, BeforeValidator(parse_number), AfterValidator(_angle)]
