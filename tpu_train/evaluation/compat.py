"""``compat`` scoring: the published MAmmoTH evaluation rules, so our numbers compare with the
papers' tables. Reconstructed from the public MAmmoTH evaluation scripts; written from the
description below, not copied:

* numbers: take the last number in the answer (commas dropped); a gold that is an integer is
  matched by ``round(prediction)``; any other gold accepts predictions within 4 % of it.
  TheoremQA additionally accepts a prediction off by a factor of 100 or 1000 (percent and
  unit guessing). NaN never matches.
* lists (TheoremQA): same length, sorted, element-wise as above.
* MATH: Hendrycks-style string normalisation (spaces, ``\\left``/``\\right``, ``\\text{}``
  units, degrees, dollar and percent signs, ``\\frac12`` -> ``\\frac{1}{2}``, ``a/b`` ->
  ``\\frac{a}{b}``, leading ``x=``, ``.5`` -> ``0.5``), then string equality.
* multiple choice: the last standalone letter A-E in the answer; for a numeric answer the
  option with the closest value; and when nothing is found, the letter ``A``, which is what
  those scripts default to. Strict mode never does any of this.

These are deliberately lenient; they are reported beside ``strict`` and never instead of it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from tpu_train.evaluation import extract, option_arith

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
_EPS = 0.04


def last_number(text: str | None) -> float | None:
    """MAmmoTH-style number extraction: the last number in the text, commas removed."""
    if text is None:
        return None
    found = _NUMBER.findall(text.replace(",", ""))
    if not found:
        return None
    try:
        value = float(found[-1])
    except ValueError:
        return None
    return None if math.isnan(value) else value


def _within_eps(pred: float, gold: float) -> bool:
    eps = abs(gold) * _EPS
    return gold - eps <= pred <= gold + eps


def numbers_match(pred: float, gold_text: str, theoremqa: bool = False) -> bool:
    """Compare like the published scripts: integer golds round, others 4 % tolerance."""
    gold = last_number(gold_text)
    if gold is None or math.isnan(pred) or math.isinf(pred):
        return False
    if re.fullmatch(r"\s*-?\d+\s*", gold_text.replace(",", "")):
        try:
            return round(pred) == int(gold)
        except (OverflowError, ValueError):
            return False
    if theoremqa:
        small, big = sorted((abs(pred), abs(gold)))
        for scale in (100, 1000):
            if small and small <= big / (scale / 2) and _within_eps(small * scale, big):
                return True
    return _within_eps(pred, gold)


def _fix_fracs(text: str) -> str:
    return re.sub(
        r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", re.sub(r"\\frac(\d)\{", r"\\frac{\1}{", text)
    )


def strip_string(text: str) -> str:
    """Hendrycks-style MATH answer normalisation (our implementation of the same rules)."""
    text = text.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    text = text.replace("tfrac", "frac").replace("dfrac", "frac")
    text = text.replace("\\left", "").replace("\\right", "")
    text = text.replace("^{\\circ}", "").replace("^\\circ", "")
    text = text.replace("\\$", "").replace("$", "").replace("\\%", "").replace("%", "")
    text = re.sub(r"\\text\{\s*[a-zA-Z ]*\}\s*$", "", text).strip()
    text = text.replace(" .", " 0.").replace("{.", "{0.")
    if text.startswith("."):
        text = "0" + text
    if "=" in text and len(text.split("=")[0].strip()) <= 2:
        text = text.split("=", 1)[1]
    text = _fix_fracs(text)
    text = text.replace(" ", "")
    match = re.fullmatch(r"(-?\d+)/(\d+)", text)
    if match:
        text = f"\\frac{{{match.group(1)}}}{{{match.group(2)}}}"
    if text == "0.5":
        text = "\\frac{1}{2}"
    return text


def choice_letter(prediction: str | None, options: Sequence[str] | None) -> str:
    """The letter the published scripts would pick, defaulting to ``A``."""
    letters = "ABCDE"
    if prediction:
        found = re.findall(r"\b([A-E])\b", prediction)
        if found:
            return found[-1]
        value = last_number(prediction)
        if value is not None and options:
            best, best_gap = None, math.inf
            for letter, option in zip(letters, options, strict=False):
                text = extract.strip_option_label(option)
                option_value = option_arith.evaluate(text)
                if option_value is None:
                    option_value = last_number(text)
                if option_value is not None and abs(option_value - value) < best_gap:
                    best, best_gap = letter, abs(option_value - value)
            if best is not None:
                return best
    return "A"


def grade_compat(
    prediction: str | None,
    gold: str,
    answer_type: str,
    options: Sequence[str] | None = None,
    theoremqa: bool = False,
) -> bool:
    """MAmmoTH-compatible verdict for one answer."""
    if answer_type == "choice":
        gold_letter = extract.explicit_letter(gold) or gold.strip().upper()
        return choice_letter(prediction, options) == gold_letter
    if prediction is None:
        return False
    if answer_type == "latex":
        return strip_string(prediction) == strip_string(gold)
    if answer_type == "bool":
        return prediction.strip().lower() in (gold.strip().lower(), gold.strip().lower()[:1])
    if answer_type == "text":
        return prediction.strip().lower() == gold.strip().lower()
    if answer_type == "list":
        preds = [float(x) for x in _NUMBER.findall(prediction.replace(",", " "))]
        golds = _NUMBER.findall(gold)
        if len(preds) != len(golds):
            return False
        return all(
            numbers_match(p, g, theoremqa)
            for p, g in zip(sorted(preds), sorted(golds, key=float), strict=True)
        )
    value = last_number(prediction)
    if value is None:
        return strip_string(prediction) == strip_string(gold)
    return numbers_match(value, gold, theoremqa)
