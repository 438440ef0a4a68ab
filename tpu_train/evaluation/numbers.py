"""Parsing numeric answers into exact rationals, without ever evaluating text.

Accepted shapes: integers and decimals (with thousands separators ``1,234,567`` or LaTeX
``1{,}234``), scientific notation, fractions ``3/4`` and ``\\frac{3}{4}``, mixed numbers
``2 1/2``, a sign, leading currency (``$``, ``€``, ``£``, ``¥``, ``₹``, ``Rs.``), trailing
percent signs and unit words (``12 cm``, ``5 apples``, ``30^\\circ``), and wrappers such as
``\\boxed{}`` / ``\\text{}``. Scale words multiply, they are not units: ``3.5 million`` is
3500000 and ``5 thousand dollars`` is 5000. Anything else, including two numbers in one
answer, NaN and infinity, parses to None: a grader must not guess which number was meant.
"""

from __future__ import annotations

import dataclasses
import re
from fractions import Fraction

MAX_NUMBER_CHARS = 200
MAX_EXPONENT = 400

_UNARY_MINUS = str.maketrans({"−": "-", "–": "-", "—": "-", "\u2009": "", "\u202f": ""})
_LATEX_WRAPPERS = re.compile(
    r"\\(?:boxed|text|textbf|mathrm|mbox|fbox|displaystyle)\s*\{([^{}]*)\}"
)
_LATEX_FRAC = re.compile(r"\\[dt]?frac\s*\{\s*([+-]?\d+)\s*\}\s*\{\s*(\d+)\s*\}")
_CURRENCY = re.compile(r"^(?:\$|€|£|¥|₹|rs\.?|usd|inr|eur)\s*", re.IGNORECASE)
_UNIT = r"(?:[a-zA-Z°]+\.?(?:[\s/-]+[a-zA-Z°]+\.?)*(?:\s*\^?\s*[23²³])?)"
_CORE = re.compile(
    r"""^(?P<sign>[+-])?\s*
    (?:
      (?P<whole>\d+)\s+(?P<mnum>\d+)\s*/\s*(?P<mden>\d+)        # mixed number 2 1/2
    | (?P<fnum>\d+(?:\.\d+)?)\s*/\s*(?P<fden>\d+(?:\.\d+)?)     # fraction 3/4
    | (?P<dec>(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|\.\d+)        # decimal, maybe 1,234.5
      (?:[eE](?P<exp>[+-]?\d+))?
    )$""",
    re.VERBOSE,
)


@dataclasses.dataclass(frozen=True)
class Number:
    """A parsed number.

    ``decimals`` is the count of digits written after a decimal point (None for integers and
    fractions); ``inexact`` marks decimal notation with a fraction part or an exponent, i.e.
    text that may carry floating-point noise; ``percent`` records a trailing percent sign.
    ``places`` is the decimal place of the last digit written (2 for ``4.17``, 9 for
    ``3.54e-07``; None when that digit is not below the units); ``unrounded`` is True for an
    exact integer or fraction and for a decimal of at least :data:`UNROUNDED_DIGITS`
    significant digits (how a program prints a float), False for a decimal that looks
    rounded by whoever wrote it.
    """

    value: Fraction
    decimals: int | None
    inexact: bool
    percent: bool
    places: int | None = None
    unrounded: bool = True


UNROUNDED_DIGITS = 10
# Multipliers, as powers of ten: "3.5 million" is 3500000, "5 thousandths" is 0.005.
_SCALES = {
    "hundred": 2, "thousand": 3, "lakh": 5, "million": 6, "crore": 7, "billion": 9,
    "trillion": 12, "tenth": -1, "hundredth": -2, "thousandth": -3, "millionth": -6,
}  # fmt: skip
_SCALE = re.compile(rf"^({'|'.join(_SCALES)})s?\b", re.IGNORECASE)


def _strip_latex(text: str) -> str:
    text = text.replace("{,}", ",").replace("\\,", "").replace("\\!", "").replace("~", " ")
    text = text.replace("\\$", "$").replace("\\%", "%").replace("\\left", "").replace("\\right", "")
    text = re.sub(r"\^\s*\{?\\circ\}?|\\circ|\\degree", "°", text)
    for _ in range(3):
        text = _LATEX_WRAPPERS.sub(r"\1", text)
    text = _LATEX_FRAC.sub(r"\1/\2", text)
    text = text.strip()
    if text.startswith("$") and text.endswith("$") and len(text) > 1 and text.count("$") == 2:
        text = text[1:-1]
    return text.strip()


_BODY_AND_SUFFIX = re.compile(
    rf"(?P<body>.*?[\d.])\s*(?P<pct>%|percent\b|per\s*cent\b)?\s*(?P<unit>{_UNIT})?\s*\.?",
    re.IGNORECASE,
)
_VARIABLE_LETTERS = frozenset("abcdefijknpqrtuvwxyzABCDEFIJKNPQRTUVWXYZ")
_EQUATION = re.compile(r"^[A-Za-z][A-Za-z_0-9]{0,2}\s*=\s*")


def _split_suffix(text: str) -> tuple[str, bool, int]:
    """Cut percent signs and unit words off the end; return (number part, had percent, power
    of ten of a leading scale word such as "million", 0 without one)."""
    match = _BODY_AND_SUFFIX.fullmatch(text)
    if match is None:
        return text, False, 0
    unit = match.group("unit") or ""
    if len(unit) == 1 and unit in _VARIABLE_LETTERS and not text[match.start("unit") - 1].isspace():
        return text, False, 0  # "5x" is an expression in x, not five of a unit called x
    scale = _SCALE.match(unit)
    power = _SCALES[scale.group(1).lower()] if scale and not match.group("pct") else 0
    return match.group("body").strip(), bool(match.group("pct")), power


def _significant_digits(digits: str) -> int:
    return len(digits.replace(".", "").lstrip("0")) or 1


def _scaled(number: Number, power: int) -> Number:
    """``number`` times 10**power: "3.5 million" is the integer 3500000, written exactly."""
    places = (number.places or 0) - power
    places = places if places > 0 else None
    return dataclasses.replace(
        number,
        value=number.value * Fraction(10) ** power,
        decimals=places,
        places=places,
        inexact=number.inexact and places is not None,
    )


def parse_number(text: str | None) -> Number | None:
    """Parse ``text`` as one number, or None when it is not exactly one finite number."""
    if text is None:
        return None
    text = str(text).translate(_UNARY_MINUS).strip()
    if not text or len(text) > MAX_NUMBER_CHARS:
        return None
    text = _EQUATION.sub("", _strip_latex(text))  # "x = 5" answers with 5
    sign = ""
    if text[:1] in "+-":
        sign, text = text[0], text[1:].lstrip()
    text = _CURRENCY.sub("", text)
    match = _CORE.match(sign + text)  # whole text first, so "1e3" is not 1 of unit "e^3"
    percent, power = False, 0
    if match is None:
        text, percent, power = _split_suffix(text)
        match = _CORE.match(sign + text)
    if match is None:
        return None
    negative = match.group("sign") == "-"
    if match.group("whole") is not None:
        den = int(match.group("mden"))
        if den == 0:
            return None
        value = int(match.group("whole")) + Fraction(int(match.group("mnum")), den)
        number = Number(value, None, False, percent)
    elif match.group("fnum") is not None:
        num, den = Fraction(match.group("fnum")), Fraction(match.group("fden"))
        if den == 0:
            return None
        inexact = "." in match.group("fnum") + match.group("fden")
        # A fraction of decimals ("0.43/1") is only as precise as its written digits.
        number = Number(num / den, None, inexact, percent, None, not inexact)
    else:
        digits = match.group("dec").replace(",", "")
        exponent = match.group("exp")
        if exponent is not None and abs(int(exponent)) > MAX_EXPONENT:
            return None
        value = Fraction(digits if not digits.endswith(".") else digits[:-1])
        if exponent is not None:
            value *= Fraction(10) ** int(exponent)
        fraction_digits = digits.split(".")[1] if "." in digits else ""
        decimals = len(fraction_digits) if fraction_digits and exponent is None else None
        places = len(fraction_digits) - int(exponent or 0)
        inexact = bool(fraction_digits) or exponent is not None
        unrounded = not inexact or _significant_digits(digits) >= UNROUNDED_DIGITS
        number = Number(
            value, decimals, inexact, percent, places if places > 0 else None, unrounded
        )
    if power:
        number = _scaled(number, power)
    if negative:
        number = dataclasses.replace(number, value=-number.value)
    return number


REL_TOLERANCE = Fraction(1, 10**6)
INTEGER_REL_TOLERANCE = Fraction(1, 10**9)
ABS_TOLERANCE = Fraction(1, 10**12)


def round_half_away(value: Fraction, places: int) -> Fraction:
    """Round to ``places`` decimals, halves away from zero (how people round by hand)."""
    scale = 10**places
    scaled = abs(value) * scale
    rounded = int(scaled + Fraction(1, 2))
    return Fraction(rounded if value >= 0 else -rounded, scale)


def _float_noise(value: Fraction, prediction: Number, gold: Number) -> bool:
    """Within floating-point noise of the gold, when either side is written as a float."""
    if not (prediction.inexact or gold.inexact):
        return False
    diff = abs(value - gold.value)
    relative = INTEGER_REL_TOLERANCE if gold.value.denominator == 1 else REL_TOLERANCE
    return diff <= ABS_TOLERANCE or diff <= relative * max(abs(value), abs(gold.value))


def _rounds_to_gold(value: Fraction, prediction: Number, gold: Number) -> bool:
    """An unrounded prediction that rounds to a non-integer gold at the gold's last digit."""
    if gold.places is None or gold.value.denominator == 1 or not prediction.unrounded:
        return False
    return round_half_away(value, gold.places) == gold.value


def values_match(
    prediction: Number,
    gold: Number,
    *,
    percent_rescale: bool = False,
    rounded_golds: bool = True,
) -> bool:
    """The strict numeric policy (per benchmark: :mod:`tpu_train.evaluation.precision`).

    1. Exact rational equality.
    2. Only when either side is written as a decimal/exponent (a float may be involved):
       floating-point noise, 1e-9 relative for an integer-valued gold and 1e-6 otherwise
       (absolute 1e-12 around zero).
    3. With ``rounded_golds`` (golds that are roundings of the true answer): a non-integer
       gold accepts an *unrounded* prediction (see :class:`Number`) rounded to the gold's
       last written digit. A prediction that is itself rounded is not rounded again: against
       ``0.4``, ``0.43`` is a different answer.
    Integer-valued golds never accept a rounded prediction (``51.0`` rejects ``50.96``), and
    with ``percent_rescale`` (only when a dataset asks for it) a prediction off by a factor of
    exactly 100 is also accepted.
    """
    candidates = [prediction.value]
    if percent_rescale:
        candidates += [prediction.value * 100, prediction.value / 100]
    for value in candidates:
        if value == gold.value or _float_noise(value, prediction, gold):
            return True
        if rounded_golds and _rounds_to_gold(value, prediction, gold):
            return True
    return False


def numbers_equal(
    prediction: str, gold: str, *, percent_rescale: bool = False, rounded_golds: bool = True
) -> bool:
    """True when both parse as single numbers that match under :func:`values_match`."""
    pred, ref = parse_number(prediction), parse_number(gold)
    if pred is None or ref is None:
        return False
    return values_match(pred, ref, percent_rescale=percent_rescale, rounded_golds=rounded_golds)
