"""Benchmark loaders, the gold oracle check and the measured data quirks."""

from __future__ import annotations

import json

import pytest

from tpu_train.evaluation import benchmarks, extract, scoring

EXPECTED_SIZES = {
    "gsm8k": 1319,
    "math": 5000,
    "aqua": 254,
    "numglue": 1042,
    "svamp": 1000,
    "mathematics": 1000,
    "simuleq": 514,
    "sat": 220,
    "mmlu_mathematics": 974,
    "theoremqa": 800,
}


@pytest.fixture(scope="module")
def records() -> dict[str, list[benchmarks.Record]]:
    return {d: benchmarks.load(d) for d in benchmarks.DATASETS}


def test_every_dataset_loads_into_one_shape(records) -> None:
    assert {d: len(r) for d, r in records.items()} == EXPECTED_SIZES
    for dataset, items in records.items():
        assert len({r.id for r in items}) == len(items), f"{dataset}: duplicate ids"
        for record in items:
            assert record.dataset == dataset and record.question and record.gold
            if record.answer_type == "choice" and record.options is not None:
                assert 2 <= len(record.options) <= 5


def test_gold_conventions(records) -> None:
    assert records["gsm8k"][0].gold == "18"
    assert records["math"][0].gold == "2" and records["math"][0].id == "math/algebra/1"
    assert records["aqua"][0].options[0].startswith("A)")
    assert records["svamp"][0].gold == "51.0"
    assert records["sat"][0].options == ("2", "4", "9", "10") and records["sat"][0].gold == "D"
    mmlu = records["mmlu_mathematics"][0]
    assert mmlu.gold == "C" and mmlu.options[2] == "p = 12"
    kinds = {r.answer_type for r in records["theoremqa"]}
    assert kinds == {"number", "bool", "list", "choice"}


def test_oracle_every_gold_grades_correct(records) -> None:
    everything = [r for items in records.values() for r in items]
    reports = scoring.oracle_check(everything)
    assert {r.dataset for r in reports} == set(EXPECTED_SIZES)
    for report in reports:
        assert report.rejected == (), report.rejected[:5]
        assert report.correct + len(report.unscorable) == report.total


def test_oracle_lists_unscorable_items_instead_of_dropping_them() -> None:
    broken = benchmarks.Record("math/x/1", "math", "q", "", "latex")
    fine = benchmarks.Record("math/x/2", "math", "q", "\\frac{1}{2}", "latex")
    (report,) = scoring.oracle_check([broken, fine])
    assert report.total == 2 and report.correct == 1
    assert report.unscorable == (("math/x/1", "no gold answer (MATH solution without \\boxed{})"),)


def test_quirks_are_measured(records) -> None:
    counts = scoring.quirks([r for items in records.values() for r in items])
    assert counts["numglue: gold is choice not number"] > 100
    assert counts["mathematics: gold is not a plain number (list or expression)"] > 20
    assert counts["simuleq: question asks two things, one gold"] > 50


def test_bad_files_name_file_line_and_field(tmp_path) -> None:
    path = tmp_path / "gsm8k_test.jsonl"
    path.write_text(json.dumps({"question": "q", "answer": "#### 1"}) + "\n" + '{"question": 1}\n')
    with pytest.raises(
        benchmarks.BenchmarkFormatError, match=r"gsm8k_test.jsonl:2: missing field 'answer'"
    ):
        benchmarks.load("gsm8k", str(tmp_path))
    (tmp_path / "svamp.json").write_text(
        json.dumps([{"Body": "b", "Question": "q", "ID": "x", "Answer": "5"}])
    )
    with pytest.raises(
        benchmarks.BenchmarkFormatError, match=r"svamp.json\[0\]: field 'Answer' is str"
    ):
        benchmarks.load("svamp", str(tmp_path))
    with pytest.raises(ValueError, match="unknown dataset"):
        benchmarks.load("gsm9k")


def test_extraction_helpers() -> None:
    assert extract.last_boxed("a \\boxed{\\frac{1}{2}} b \\boxed{x^{2}}") == "x^{2}"
    assert extract.last_boxed("nothing") is None
    assert extract.extract_cot_answer("So 9*2 = 18.\nThe answer is 18.", "number") == "18"
    assert extract.extract_cot_answer("#### 1,234", "number") == "1,234"
    assert extract.extract_cot_answer("thus $\\boxed{\\frac{3}{4}}$.", "latex") == "\\frac{3}{4}"
    assert extract.split_inline_choices("Q? \nAnswer Choices: (A) 2 (B) $\\quad 5.7$") == (
        "Q?",
        ["2", "$\\quad 5.7$"],
    )


def test_math_golds_survive_the_symbolic_checker(records) -> None:
    """The oracle's identical-answer fast path skips math-verify; here 40 MATH golds spread over
    all subjects are wrapped in \\boxed{} so they must go through the sandboxed checker."""
    from tpu_train.evaluation import grader
    from tpu_train.evaluation.latex import LatexChecker

    sample = records["math"][::125]
    requests = [grader.GradeRequest("\\boxed{" + r.gold + "}", r.gold, "latex") for r in sample]
    checker = LatexChecker(workers=2, timeout_s=10.0)
    try:
        verdicts = grader.grade_many(requests, checker=checker)
    finally:
        checker.close()
    assert [r.id for r, ok in zip(sample, verdicts, strict=True) if not ok] == []
