"""Finding, parsing and formatting the numbers written in problem text.

Example:
    >>> [(m.text, m.value) for m in find_numbers("Pay $1,250.50 for 3 hats")]
    [('1,250.50', Fraction(2501, 2)), ('3', Fraction(3, 1))]
    >>> format_number(Fraction(5, 2), decimals=2, commas=False)
    '2.50'
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction

# A number not glued to letters, digits or a decimal point on either side: "1,250.50", "3", ".5".
_NUMBER_RE = re.compile(r"(?<![\w.])(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?(?![\w]|\.\d)")


@dataclass(frozen=True)
class NumberMention:
    """One number written in a text.

    Attributes:
        text: the characters of the number itself, without "$" or "%".
        start: offset of `text` in the source string.
        end: offset one past the end of `text`.
        value: exact value.
        decimals: digits after the decimal point as written.
        commas: whether thousands separators were written.
        prefix: the character just before the number ("$" for money), or "".
        percent: whether "%" or the word "percent" follows.
    """

    text: str
    start: int
    end: int
    value: Fraction
    decimals: int
    commas: bool
    prefix: str
    percent: bool


def parse_plain_decimal(text: str) -> Fraction:
    """Parse a plain decimal numeral such as "1,250.50", "-3" or ".5" exactly.

    Deliberately strict: this reads the numerals written in problems and GSM8K's "####" lines, where
    anything else ("1/2", "$5", "50%") must be reported, not interpreted. Reading a model's *answer*
    is the lenient `tpu_train.evaluation.numbers.parse_number` (currency, percent, fractions, LaTeX).

    Example:
        >>> parse_plain_decimal("1,000.25")
        Fraction(4001, 4)

    Raises:
        ValueError: if `text` is not a plain decimal number.
    """
    cleaned = text.strip().replace(",", "")
    if not re.fullmatch(r"[-+]?(?:\d+\.?\d*|\.\d+)", cleaned):
        raise ValueError(f"not a plain decimal number: {text!r}")
    return Fraction(cleaned)


def find_numbers(text: str) -> list[NumberMention]:
    """Every plain decimal number in `text`, left to right (see the module example)."""
    mentions = []
    for match in _NUMBER_RE.finditer(text):
        raw = match.group(0)
        if not raw or not any(ch.isdigit() for ch in raw):
            continue
        start, end = match.span()
        tail = text[end : end + 9].lower()
        mentions.append(
            NumberMention(
                text=raw,
                start=start,
                end=end,
                value=parse_plain_decimal(raw),
                decimals=len(raw.split(".", 1)[1]) if "." in raw else 0,
                commas="," in raw,
                prefix=text[start - 1] if start > 0 and text[start - 1] == "$" else "",
                percent=tail.startswith("%") or tail.lstrip().startswith("percent"),
            )
        )
    return mentions


def format_number(value: Fraction | int | float, decimals: int = 0, commas: bool = False) -> str:
    """Write `value` with `decimals` places, optionally with thousands separators.

    Example:
        >>> format_number(1234567, commas=True)
        '1,234,567'
    """
    if decimals == 0:
        text = f"{round(Fraction(value)):,}" if commas else str(round(Fraction(value)))
    else:
        text = f"{float(value):,.{decimals}f}" if commas else f"{float(value):.{decimals}f}"
    return text


def canonical_answer(text: str) -> str | None:
    """Canonical decimal string for a numeric answer, or None if `text` is not a finite number.

    Float noise is removed: values within 1e-9 (relative) of an integer become that integer, other
    values are rounded to 10 significant digits and stripped of trailing zeros.

    Example:
        >>> canonical_answer("10.000000000000002"), canonical_answer("0.30000000000000004")
        ('10', '0.3')
        >>> canonical_answer("abc") is None
        True
    """
    try:
        value = float(text.strip().replace(",", ""))
    except (ValueError, AttributeError):
        return None
    if not math.isfinite(value):
        return None
    nearest = round(value)
    if abs(value - nearest) <= 1e-9 * max(1.0, abs(value)):
        return str(int(nearest))
    out = f"{value:.10g}"
    if "e" in out:
        out = f"{value:.12f}".rstrip("0").rstrip(".")
    return out


def decimal_places(text: str) -> int:
    """Digits after the decimal point of a canonical answer string ("2.25" -> 2, "7" -> 0)."""
    return len(text.split(".", 1)[1]) if "." in text else 0
