"""Variable constraints: inferring them from a problem's numbers and drawing new values.

A variable spec is the JSON dict stored under `variables[name]` of a program record:
`{"value": 48, "constraints": ["integer", "positive"], "range": [24, 96], "step": 1}`, plus
`"decimals": d` for numbers written with d decimal places and `"commas": true` for numbers written
with thousands separators. Specs from other producers may carry only "value"; `complete_spec`
fills in the rest from the value.

Example:
    >>> spec = infer_spec(Fraction(48), decimals=0, commas=False, percent=False, money=False)
    >>> spec["constraints"], spec["range"], spec["step"]
    (['integer', 'positive'], [24, 96], 12)
    >>> draw_value(spec, random.Random(0)) != 48
    True
"""

from __future__ import annotations

import math
import random
from fractions import Fraction
from typing import Any


def _grid_step(value: Fraction, decimals: int) -> Fraction:
    if decimals > 0:
        quarter = Fraction(1, 4)
        if decimals == 2 and (value / quarter).denominator == 1:
            return quarter
        return Fraction(1, 10**decimals)
    integer = int(value)
    trailing = 0
    while integer and integer % 10 ** (trailing + 1) == 0:
        trailing += 1
    # Keep the divisibility the problem may rely on ("half of 48", "a third of 60"): the largest
    # divisor of gcd(value, 120) (or power of ten) that still leaves at least four grid points.
    options = [d for d in range(1, 121) if 120 % d == 0 and integer % d == 0]
    if trailing >= 2:
        options.append(10 ** (trailing - 1))
    usable = [d for d in options if integer // d >= 3] or [1]
    return Fraction(max(usable))


def _number(value: Fraction) -> int | float:
    return int(value) if value.denominator == 1 else float(value)


def infer_spec(
    value: Fraction, decimals: int, commas: bool, percent: bool, money: bool
) -> dict[str, Any]:
    """Constraints and sampling range for a number as written in a problem (see module example)."""
    constraints = []
    is_int = value.denominator == 1 and decimals == 0
    if is_int:
        constraints.append("integer")
    constraints.append("positive" if value > 0 else "non_negative")
    if percent:
        constraints.append("percentage")
    if money:
        constraints.append("money")
    step = _grid_step(value, decimals)
    if percent and value <= 100:
        low, high = max(step, Fraction(5) if value % 5 == 0 else Fraction(1)), Fraction(100)
        if value < 100:
            high = Fraction(95) if value % 5 == 0 else Fraction(99)
    else:
        low = max(step, value / 2)
        high = max(value * 2, low + 4 * step)
    low = math.ceil(low / step) * step
    high = math.floor(high / step) * step
    spec: dict[str, Any] = {
        "value": _number(value),
        "constraints": constraints,
        "range": [_number(low), _number(high)],
        "step": _number(step),
    }
    if decimals:
        spec["decimals"] = decimals
    if commas:
        spec["commas"] = True
    return spec


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def complete_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """Fill missing or unusable keys of a foreign spec from its value (keeps what is usable).

    A given "range" is kept when it is two numbers around the value, "step" when positive.

    Example:
        >>> complete_spec({"value": 2.5})["constraints"]
        ['positive']
        >>> complete_spec({"value": 40, "range": [10, 90]})["range"], complete_spec({"value": 4, "range": "1-9"})["range"]
        ([10, 90], [2, 8])
    """
    value = Fraction(str(spec["value"]))
    text = str(spec["value"])
    decimals = len(text.split(".", 1)[1]) if "." in text and value.denominator != 1 else 0
    out = infer_spec(
        value, int(spec.get("decimals", decimals)), bool(spec.get("commas")), False, False
    )
    out["value"] = spec["value"]
    if isinstance(spec.get("constraints"), list):
        out["constraints"] = list(spec["constraints"])
    given = spec.get("range")
    if (
        isinstance(given, list | tuple)
        and len(given) == 2
        and all(_is_number(x) for x in given)
        and given[0] <= spec["value"] <= given[1]
    ):
        out["range"] = list(given)
    if _is_number(spec.get("step")) and spec["step"] > 0:
        out["step"] = spec["step"]
    return out


def draw_value(spec: dict[str, Any], rng: random.Random) -> int | float:
    """A new value on the spec's grid inside its range, different from the original if possible."""
    step = Fraction(str(spec["step"]))
    low, high = (Fraction(str(x)) for x in spec["range"])
    first, last = math.ceil(low / step), math.floor(high / step)
    original = Fraction(str(spec["value"]))
    if last < first:
        return _number(original)
    for _ in range(8):
        candidate = rng.randint(first, last) * step
        if candidate != original:
            break
    return _number(candidate)
