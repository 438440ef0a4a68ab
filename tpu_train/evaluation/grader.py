"""Answer grading: a ``strict`` policy that is right in both directions, and ``compat``.

Answer types: ``number`` (GSM8K, SVAMP, NumGLUE, SimulEq, TheoremQA integer/float), ``latex``
(MATH), ``expression`` (DeepMind mathematics: numbers, lists or expressions), ``list``,
``bool``, ``text`` (NumGLUE's word answers) and ``choice`` (AQuA, SAT, MMLU, TheoremQA
options; ``options`` lists the option texts in letter order).

Strict policy: exact rationals first, float-noise tolerance only when a float is involved,
integer-valued golds exact, and, for benchmarks whose decimal golds are roundings (the
``dataset``'s policy in :mod:`tpu_train.evaluation.precision`), an unrounded prediction
rounded to the gold's last digit; no percent rescaling unless ``percent=True``; NaN/inf never
match (see :mod:`tpu_train.evaluation.numbers`). Symbolic comparison uses math-verify inside
the sandbox (:mod:`tpu_train.evaluation.latex`). Nothing here evaluates model text.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

from tpu_train.evaluation import compat, extract, latex, numbers, option_arith, precision

ANSWER_TYPES = ("number", "latex", "expression", "list", "bool", "text", "choice")
MODES = ("strict", "compat")
_TRUE = {"true", "yes", "correct", "t", "y"}
_FALSE = {"false", "no", "incorrect", "f", "n"}
_CHOICE_TOLERANCE = 1e-6


@dataclasses.dataclass(frozen=True)
class GradeRequest:
    """One answer to grade (for :func:`grade_many`)."""

    prediction: str | None
    gold: str
    answer_type: str
    options: tuple[str, ...] | None = None
    percent: bool = False
    dataset: str | None = None


@dataclasses.dataclass(frozen=True)
class _Symbolic:
    prediction: str
    gold: str


def numbers_equal(prediction: str, gold: str, dataset: str | None = None) -> bool:
    """The strict numeric policy applied to two strings (see :mod:`numbers`), with the
    precision policy of ``dataset`` (:mod:`precision`)."""
    return numbers.numbers_equal(prediction, gold, rounded_golds=precision.rounds_golds(dataset))


def _parse_list(text: str) -> list[str] | None:
    text = text.strip().strip("$").strip()
    if text[:1] in "[(" and text[-1:] in "])":
        text = text[1:-1]
    items = [item.strip() for item in re.split(r",(?!\d{3}\b)|;", text)]
    if not items or any(not item for item in items):
        return None
    return items


def _lists_equal(prediction: str, gold: str, rounded_golds: bool) -> bool:
    preds, golds = _parse_list(prediction), _parse_list(gold)
    if preds is None or golds is None or len(preds) != len(golds):
        return False
    return all(
        numbers.numbers_equal(p, g, rounded_golds=rounded_golds)
        for p, g in zip(preds, golds, strict=True)
    )


def _bool_value(text: str) -> bool | None:
    word = re.sub(r"[^a-z]", "", text.strip().lower())
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    return None


def _option_matches(prediction: numbers.Number, option: str, rounded_golds: bool) -> bool:
    text = extract.strip_option_label(option)
    parsed = numbers.parse_number(text)
    if parsed is not None:
        return numbers.values_match(prediction, parsed, rounded_golds=rounded_golds)
    value = option_arith.evaluate(text)
    if value is None:
        return False
    pred = float(prediction.value)
    return abs(pred - value) <= _CHOICE_TOLERANCE * max(abs(value), abs(pred), 1e-12)


def _choice(prediction: str, gold: str, options: Sequence[str] | None, rounded_golds: bool) -> bool:
    gold_letter = extract.explicit_letter(gold)
    if gold_letter is None:
        raise ValueError(f"choice gold {gold!r} is not a letter")
    letter = extract.explicit_letter(prediction)
    if letter is not None:
        return letter == gold_letter
    value = numbers.parse_number(prediction)
    if value is None or not options:
        return False
    matching = [
        "ABCDE"[i]
        for i, option in enumerate(options[:5])
        if _option_matches(value, option, rounded_golds)
    ]
    return matching == [gold_letter]


def _strict(request: GradeRequest) -> bool | _Symbolic:
    prediction, gold, kind = request.prediction, request.gold, request.answer_type
    rounded = precision.rounds_golds(request.dataset)
    if prediction is None or not prediction.strip():
        return False
    if kind == "choice":
        return _choice(prediction, gold, request.options, rounded)
    if kind == "bool":
        pred, ref = _bool_value(prediction), _bool_value(gold)
        return pred is not None and pred == ref
    gold_number = numbers.parse_number(gold)
    pred_number = numbers.parse_number(prediction)
    if gold_number is not None and pred_number is not None:
        return numbers.values_match(
            pred_number, gold_number, percent_rescale=request.percent, rounded_golds=rounded
        )
    if kind == "number":
        return False
    if kind == "text":
        return prediction.strip().lower().rstrip(".") == gold.strip().lower().rstrip(".")
    if kind == "list" or (kind == "expression" and gold.strip()[:1] == "["):
        return _lists_equal(prediction, gold, rounded)
    if gold_number is not None and kind == "expression":
        return False
    if latex.normalise(prediction) == latex.normalise(gold):
        return True
    return _Symbolic(prediction, gold)


def _check(answer_type: str, mode: str) -> None:
    if answer_type not in ANSWER_TYPES:
        raise ValueError(f"unknown answer_type {answer_type!r}; expected one of {ANSWER_TYPES}")
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")


def grade_many(
    requests: Sequence[GradeRequest],
    *,
    mode: str = "strict",
    checker: latex.LatexChecker | None = None,
) -> list[bool]:
    """Grade many answers, sending every symbolic comparison to the sandbox in one batch."""
    decisions: list[bool | _Symbolic] = []
    for request in requests:
        _check(request.answer_type, mode)
        if mode == "compat":
            decisions.append(
                compat.grade_compat(
                    request.prediction,
                    request.gold,
                    request.answer_type,
                    request.options,
                    theoremqa=request.dataset == "theoremqa",
                )
            )
        else:
            decisions.append(_strict(request))
    symbolic = [i for i, d in enumerate(decisions) if isinstance(d, _Symbolic)]
    if symbolic:
        checker = checker or latex.default_checker()
        pairs = [(decisions[i].prediction, decisions[i].gold) for i in symbolic]
        for index, verdict in zip(symbolic, checker.equal_many(pairs), strict=True):
            decisions[index] = verdict
    return [bool(d) for d in decisions]


def grade(
    prediction: str | None,
    gold: str,
    answer_type: str,
    *,
    mode: str = "strict",
    options: Sequence[str] | None = None,
    percent: bool = False,
    dataset: str | None = None,
    checker: latex.LatexChecker | None = None,
) -> bool:
    """Grade one answer. ``options`` are the option texts (letter order) for ``choice``."""
    request = GradeRequest(
        prediction=prediction,
        gold=gold,
        answer_type=answer_type,
        options=tuple(options) if options is not None else None,
        percent=percent,
        dataset=dataset,
    )
    return grade_many([request], mode=mode, checker=checker)[0]
