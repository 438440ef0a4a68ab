"""Answer equivalence, both directions, across GSM8K, SVAMP/NumGLUE, MATH and AQuA styles."""

from __future__ import annotations

import os
import time

import pytest

from tpu_train.evaluation import benchmarks, compat, extract, grader, numbers, pipeline, precision
from tpu_train.evaluation.latex import LatexChecker

AQUA_OPTIONS = ("A)5(√3 + 1)", "B)6(√3 + √2)", "C)7(√3 – 1)", "D)8(√3 – 2)", "E)None of these")
SAT_OPTIONS = ("3", "5.7", "9.5", "14.3")

# (prediction, gold, must_accept)
NUMERIC_CASES = [
    # GSM8K: integers, separators, currency, units
    ("18", "18", True),
    ("18.0", "18", True),
    ("18.00", "18", True),
    ("$18", "18", True),
    ("$1,234", "1234", True),
    ("1,234,567", "1234567", True),
    ("18 dollars", "18", True),
    ("+18", "18", True),
    ("x = 18", "18", True),
    ("\\boxed{18}", "18", True),
    ("18.0000000001", "18", True),  # float noise from a PoT program
    ("17.999999999999996", "18", True),
    ("10001", "10000", False),  # lenient relative tolerance
    ("4.6", "5", False),  # rounding to an integer gold
    ("5.4", "5", False),
    ("19", "18", False),
    ("-18", "18", False),
    ("18 and 20", "18", False),
    ("", "18", False),
    ("eighteen", "18", False),
    ("nan", "18", False),
    ("inf", "18", False),
    ("18x", "18", False),
    ("1,8", "18", False),
    # SVAMP / NumGLUE: float golds and decimals
    ("51", "51.0", True),
    ("51.0", "51.0", True),
    ("0.30000000000000004", "0.3", True),
    ("33.333333333333336", "33.33", True),  # gold with 2 decimals accepts rounding
    ("1536", "1536", True),
    ("4.166666666666667", "4.17", True),
    ("4.16", "4.17", False),
    ("4.2", "4.17", False),
    ("0.5", "50", False),  # no percent guessing
    ("50", "0.5", False),
    ("50%", "50", True),
    ("12.5 %", "12.5", True),
    ("3/4", "0.75", True),
    ("1 1/2", "1.5", True),
    ("\\frac{3}{4}", "0.75", True),
    ("-\\frac{1}{2}", "-0.5", True),
    ("2/3", "0.6666666667", True),
    ("0.667", "0.6666666667", False),
    ("1e3", "1000", True),
    ("1.5e-3", "0.0015", True),
    ("9**9**9**9", "9", False),
    ("__import__('os').system('true')", "0", False),
    ("1e999999999", "1", False),
]


@pytest.mark.parametrize(("prediction", "gold", "accept"), NUMERIC_CASES)
def test_numeric_policy(prediction: str, gold: str, accept: bool) -> None:
    assert grader.numbers_equal(prediction, gold) is accept
    assert grader.grade(prediction, gold, "number") is accept


# (prediction, gold, dataset, must_accept): a gold's written decimals are a rounding only for
# the benchmarks whose policy says so, and only an unrounded prediction is rounded to them.
PRECISION_CASES = [
    ("0.43", "0.4", None, False),  # a rounded prediction is another answer, not a finer one
    ("0.40", "0.4", None, True),
    ("0.049", "0.0", None, False),  # integer-valued golds are exact
    ("0", "0.0", None, True),
    ("0.00000000000000001", "0.0", None, True),  # float noise around zero
    ("0.04912345678901", "0.0", "numglue", False),  # exact even where golds are rounded
    ("50.96", "51.0", "svamp", False),  # SVAMP writes every gold as N.0
    ("51", "51.0", "svamp", True),
    ("50.99999999999999", "51.0", "svamp", True),
    ("1000000.5", "1000000", None, False),  # 5e-7 relative: not noise for an integer gold
    ("1000000.0000001", "1000000", None, True),
    ("0.4321987654321", "0.4", "numglue", True),  # an unrounded float rounds to the gold
    ("0.4321987654321", "0.4", "theoremqa", True),
    ("0.4321987654321", "0.4", "mathematics", False),  # DeepMind's golds are exact
    ("0.4321987654321", "0.4", "gsm8k", False),
    ("25/6", "4.17", "numglue", True),  # an exact fraction is unrounded too
    ("25/6", "4.17", "mathematics", False),
    ("4.1667", "4.17", "numglue", False),
    ("4.17", "4.17", "numglue", True),
    ("0.45000000001", "0.5", "simuleq", True),  # halves away from zero
    ("0.4499999999", "0.5", "simuleq", False),
    ("3.541234567e-07", "3.54e-07", "theoremqa", True),  # rounded at the last written digit
    ("3.5e-07", "3.54e-07", "theoremqa", False),
    ("0.5235987755982988", "0.5235987667", "theoremqa", True),  # pi/6: 1.7e-8 relative noise
    ("0.5235987755982988", "0.5235987667", "mathematics", True),
    ("0.5236", "0.5235987667", "theoremqa", False),
]


@pytest.mark.parametrize(("prediction", "gold", "dataset", "accept"), PRECISION_CASES)
def test_precision_policy(prediction: str, gold: str, dataset: str | None, accept: bool) -> None:
    assert grader.grade(prediction, gold, "number", dataset=dataset) is accept
    assert grader.numbers_equal(prediction, gold, dataset) is accept


def test_every_benchmark_has_a_precision_policy() -> None:
    for dataset in (*benchmarks.DATASETS, benchmarks.GSM8K_PLUS):
        assert precision.POLICIES[dataset] in (precision.EXACT, precision.ROUNDED), dataset
    assert precision.policy_for(None) == precision.ROUNDED
    # Lists and options follow their dataset's policy too.
    assert grader.grade("[0.4321987654321]", "[0.4]", "list", dataset="theoremqa")
    assert not grader.grade("[0.43]", "[0.4]", "list", dataset="theoremqa")
    assert not grader.grade("5.7123", "B", "choice", options=SAT_OPTIONS, dataset="sat")
    assert grader.grade("5.744562646538029", "B", "choice", options=SAT_OPTIONS, dataset="sat")


# Scale words multiply (they are not units): (prediction, gold, must_accept).
SCALE_CASES = [
    ("3.5 million", "3500000", True),
    ("3500000", "3.5 million", True),
    ("5 thousand", "5", False),
    ("5 thousand", "5000", True),
    ("5 thousand", "5000.0", True),
    ("$2.5 billion", "2500000000", True),
    ("2.5 billion dollars", "2.5", False),
    ("1.2 million people", "1200000", True),
    ("2 1/2 million", "2500000", True),
    ("3 lakh", "300000", True),
    ("5 thousandths", "0.005", True),
    ("5 thousandths", "5", False),
    ("7 hundred", "700", True),
    ("7 hundred", "7", False),
]


@pytest.mark.parametrize(("prediction", "gold", "accept"), SCALE_CASES)
def test_scale_words_are_multipliers(prediction: str, gold: str, accept: bool) -> None:
    assert grader.grade(prediction, gold, "number") is accept


def test_compat_keeps_mammoths_rules_for_the_strict_fixes() -> None:
    """What strict now rejects or accepts differently, compat scores as MAmmoTH does."""
    assert grader.grade("50.96", "51.0", "number", mode="compat", dataset="svamp")  # round()
    assert grader.grade("5 thousand", "5", "number", mode="compat")  # the last number is 5
    assert not grader.grade("3.5 million", "3500000", "number", mode="compat")
    assert grader.grade("0.41", "0.4", "number", mode="compat")  # within 4 %
    assert not grader.grade("0.43", "0.4", "number", mode="compat")


def test_cot_extraction_takes_stated_answers_only() -> None:
    text = "She has 3 + 4 = 7 apples, then buys 2 more"
    assert extract.extract_cot_answer(text, "number") is None
    assert extract.extract_cot_answer(text, "number", last_number_fallback=True) == "2"
    stated = "3 + 4 = 7, so the answer is 9."
    assert extract.extract_cot_answer(stated, "number") == "9"
    assert extract.extract_cot_answer(stated, "number", last_number_fallback=True) == "9"
    assert extract.extract_cot_answer("so #### 12", "number") == "12"
    assert extract.extract_cot_answer("x is \\boxed{4}", "expression") == "4"


def test_pipeline_grades_cot_without_a_statement_only_in_compat() -> None:
    record = benchmarks.Record("gsm8k/0", "gsm8k", "q", "9", "number")
    outputs = ["First 4 + 5 = 9", "The answer is 9.", "First 4 + 5 = 8"]
    pairs = [(pipeline.Prediction("gsm8k/0", "gsm8k", o, "cot"), record) for o in outputs]
    items, _ = pipeline.evaluate_records(pairs)
    assert [(i["answer"], i.get("compat_answer")) for i in items] == [
        (None, "9"),
        ("9", None),
        (None, "8"),
    ]
    assert [(i["strict"], i["compat"]) for i in items] == [
        (False, True),
        (True, True),
        (False, False),
    ]


def test_percent_rescaling_only_when_asked() -> None:
    assert not grader.grade("0.5", "50", "number")
    assert grader.grade("0.5", "50", "number", percent=True)


CHOICE_CASES = [
    ("A", "A", AQUA_OPTIONS, True),
    ("(a)", "A", AQUA_OPTIONS, True),
    ("A)", "A", AQUA_OPTIONS, True),
    ("Option A", "A", AQUA_OPTIONS, True),
    ("B", "A", AQUA_OPTIONS, False),
    ("13.660254037844386", "A", AQUA_OPTIONS, True),  # PoT value mapped onto the option
    ("13.66", "A", AQUA_OPTIONS, False),  # not within float noise of 5(√3+1)
    ("2.190890230020664", "C", AQUA_OPTIONS, False),  # matches no option
    (None, "A", AQUA_OPTIONS, False),  # never a default letter
    ("", "A", AQUA_OPTIONS, False),
    ("5.7", "B", SAT_OPTIONS, True),
    ("5.699999999999999", "B", SAT_OPTIONS, True),
    ("3.0", "A", SAT_OPTIONS, True),
    ("9.5", "B", SAT_OPTIONS, False),
    ("D", "D", None, True),
    ("42", "D", None, False),
]


@pytest.mark.parametrize(("prediction", "gold", "options", "accept"), CHOICE_CASES)
def test_choice(prediction, gold, options, accept) -> None:
    assert grader.grade(prediction, gold, "choice", options=options) is accept


def test_cot_choice_needs_an_explicit_letter() -> None:
    assert extract.extract_cot_answer("so the answer is (C).", "choice") == "C"
    assert extract.extract_cot_answer("The answer is 13.66", "choice") is None
    assert extract.extract_cot_answer("no idea", "choice") is None


def test_compat_mode_reproduces_published_leniency() -> None:
    # These are exactly the strict mode's rejections that the published scripts accept.
    assert grader.grade("4.6", "5", "number", mode="compat")
    assert grader.grade("51.9", "51.0", "number", mode="compat")  # within 4 %
    assert grader.grade(None, "A", "choice", mode="compat", options=AQUA_OPTIONS)  # default A
    assert grader.grade("13.66", "A", "choice", mode="compat", options=AQUA_OPTIONS)
    assert grader.grade("0.5", "50.0", "number", mode="compat", dataset="theoremqa")
    assert not grader.grade("10001", "10000", "number", mode="compat")
    assert compat.strip_string("\\dfrac{1}{2}") == compat.strip_string("\\frac12")
    assert grader.grade("\\dfrac{1}{2}", "\\frac12", "latex", mode="compat")


def test_bool_text_and_lists() -> None:
    assert grader.grade("True", "True", "bool")
    assert grader.grade("yes", "True", "bool")
    assert not grader.grade("False", "True", "bool")
    assert not grader.grade("maybe", "True", "bool")
    assert grader.grade("[0, 5]", "[0, 5]", "list")
    assert grader.grade("(0.3333, 0.25)", "[0.3333, 0.25]", "list")
    assert not grader.grade("[5, 0]", "[0, 5]", "list")
    assert not grader.grade("[0]", "[0, 5]", "list")
    assert grader.grade("3", "[3]", "expression")
    assert grader.grade("1363", "1363.0", "expression")
    assert grader.grade("Chicken", "chicken", "text")


def test_unknown_type_or_mode_is_an_error() -> None:
    with pytest.raises(ValueError, match="answer_type"):
        grader.grade("1", "1", "numeric")
    with pytest.raises(ValueError, match="mode"):
        grader.grade("1", "1", "number", mode="loose")
    with pytest.raises(ValueError, match="not a letter"):
        grader.grade("1", "5", "choice")


@pytest.fixture(scope="module")
def checker():
    """Generous deadline: legitimate checks must not time out on a loaded machine."""
    c = LatexChecker(workers=2, timeout_s=10.0)
    yield c
    c.close()


@pytest.fixture(scope="module")
def short_checker():
    """Short deadline for the hostile answers, most of which run until killed."""
    c = LatexChecker(workers=2, timeout_s=2.0)
    yield c
    c.close()


# MATH-style answers, checked by math-verify in the sandbox unless trivially identical.
LATEX_CASES = [
    ("\\frac{1}{2}", "0.5", True),
    ("\\dfrac{\\sqrt{2}}{2}", "\\frac{\\sqrt2}{2}", True),
    ("\\sqrt{2}/2", "\\frac{\\sqrt{2}}{2}", True),
    ("2x+1", "1+2x", True),
    ("c+5", "m+5", False),  # never strip single letters
    ("x = 3", "3", True),
    ("\\{1, 2\\}", "\\{2, 1\\}", True),  # sets ignore order
    ("(1, 2)", "(2, 1)", False),  # tuples do not
    ("[0, 1)", "[0,1)", True),
    ("[0, 1]", "[0, 1)", False),
    ("30^\\circ", "30", True),
    ("\\text{5 cm}", "5", True),
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", True),
    ("\\begin{pmatrix} 2 \\\\ 1 \\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", False),
    ("\\frac{3}{4}", "\\frac{4}{3}", False),
    ("\\pi", "3.14", False),
]


def test_latex_equivalence(checker: LatexChecker) -> None:
    requests = [grader.GradeRequest(p, g, "latex") for p, g, _ in LATEX_CASES]
    got = grader.grade_many(requests, checker=checker)
    assert got == [accept for *_, accept in LATEX_CASES], list(zip(LATEX_CASES, got, strict=True))


HOSTILE = [
    "__import__('os').system('touch /tmp/grader_pwned')",
    "9**9**9**9",
    "{" * 3000 + "1" + "}" * 3000,
    "\\frac{" * 300 + "1" + "}{2}" * 300,
    "\\sqrt{" * 500 + "2" + "}" * 500,
    "x" * 100000,
    "(" * 1000 + ")" * 1000,
]


def test_grader_hostile_answers_are_false_and_harmless(short_checker: LatexChecker) -> None:
    start = time.monotonic()
    for kind in ("latex", "expression", "number"):
        requests = [grader.GradeRequest(h, "2", kind) for h in HOSTILE]
        assert grader.grade_many(requests, checker=short_checker) == [False] * len(HOSTILE)
    # Each symbolic check has a 2 s kill deadline (plus slack for a loaded machine).
    assert time.monotonic() - start < (2.0 + 1.0) * len(HOSTILE) * 2
    still_alive = grader.GradeRequest("2x+1", "1+2x", "latex")  # needs the sandbox
    assert grader.grade_many([still_alive], checker=short_checker) == [True]
    assert not os.path.exists("/tmp/grader_pwned")


def test_number_parser_details() -> None:
    parsed = numbers.parse_number("$1,234.50")
    assert parsed is not None and parsed.decimals == 2 and parsed.inexact
    assert numbers.parse_number("2 1/2").value == numbers.parse_number("5/2").value
    assert numbers.parse_number("1/0") is None
    assert (
        numbers.round_half_away(numbers.parse_number("2.345").value, 2)
        == numbers.parse_number("2.35").value
    )
