"""GSM8K -> program converter and repopulation: synthesis, sandboxed verification, determinism."""

from __future__ import annotations

import dataclasses
import gzip
import itertools
import json
import random
from fractions import Fraction
from pathlib import Path

import pytest

from tpu_train.data import gsm8k_plus, gsm8k_to_programs
from tpu_train.data.annotations import AnnotationError, parse_annotation
from tpu_train.data.gsm8k_programs import ConversionError, synthesize
from tpu_train.data.gsm8k_to_programs import convert, read_gsm8k
from tpu_train.data.records import (
    FieldMap,
    ProgramRecord,
    RecordError,
    read_program_records,
    write_jsonl,
)
from tpu_train.data.repopulate import draw_candidates, repopulate, well_formed
from tpu_train.data.substitute import (
    SubstitutionError,
    check_substitutable,
    render_program,
    substitute,
)
from tpu_train.data.textnums import canonical_answer, find_numbers
from tpu_train.data.variables import draw_value, infer_spec
from tpu_train.data.verify import Executor, ExecutorConfig, run_programs

DATA = Path(__file__).resolve().parents[1] / "data"
TRAIN = DATA / "gsm8k" / "gsm8k_train.jsonl"
PROGRAMS = DATA / "programs" / "gsm8k_train_programs.jsonl.gz"
VARIANTS = DATA / "programs" / "gsm8k_train_variants.jsonl.gz"


@pytest.fixture(scope="module")
def executor():
    with Executor(ExecutorConfig(timeout_s=5.0, workers=2)) as ex:
        yield ex


def test_numbers_in_text():
    found = find_numbers("He paid $1,200.50 for 3 hats, 25% off, on the 2nd day.")
    assert [(m.text, m.prefix, m.percent) for m in found] == [
        ("1,200.50", "$", False),
        ("3", "", False),
        ("25", "", True),
    ]
    assert found[0].value == Fraction(240100, 200) and found[0].commas
    assert canonical_answer("72.0") == "72" and canonical_answer("0.1 + x") is None


def test_annotation_arithmetic_is_exact_and_rejects_code():
    ann = parse_annotation("1/3*3=1")
    assert ann.value == 1 and ann.stated == 1
    for bad in ("__import__('os')=1", "2**100000=1", "5/0=1", "3 4=7"):
        with pytest.raises(AnnotationError):
            parse_annotation(bad)


def test_synthesis_masks_numbers_and_keeps_unit_constants():
    draft = synthesize(
        "t/1",
        "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips "
        "in May. She has 2 dogs. How many clips did Natalia sell altogether in April and May?",
        "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
        "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72",
    )
    assert draft.general_problem.startswith("Natalia sold clips to {friends} of her friends")
    # "half" explains the 2, so the unrelated "2 dogs" is not tied to it and stays unmasked.
    assert "She has 2 dogs." in draft.general_problem
    assert list(draft.variables) == ["friends"]
    assert draft.variables["friends"]["constraints"] == ["integer", "positive"]
    assert "friends / 2" in draft.program and draft.answer == 72
    body = draft.program.splitlines()
    assert body[0] == "def solution():" and body[1].startswith('    """')
    # A comment above every line: the question's words around a given value, the rationale for a step.
    for above, line in itertools.pairwise(body[1:-2]):
        if not line.lstrip().startswith("#"):
            assert above.lstrip().startswith("#"), line
    at = body.index("    friends = 48")
    assert body[at - 1] == "    # Natalia sold clips to {friends} of her friends"


def test_rendered_program_quotes_the_question_around_each_number():
    question = "Ann bought 12 apples for $3 each. She ate 2. How many dollars did she spend?"
    draft = synthesize("t/r", question, "12*3=<<12*3=36>>36\n#### 36")
    record = ProgramRecord(
        draft.id, "gsm8k", question, draft.general_problem, draft.program, draft.variables, 36, "36"
    )
    rendered = render_program(record)
    assert "{" not in rendered  # every placeholder in comments and docstring is filled
    comments = [line.strip()[2:] for line in rendered.splitlines() if line.strip().startswith("# ")]
    assert "Ann bought 12 apples for $3 each" in comments
    # The words before each number are the question's, so the number continues a quoted phrase.
    assert "Ann bought 12" in comments[0] and comments[0] in question
    # Code lines are left alone: the program still runs as stored, with the same numbers.
    code = lambda text: [ln for ln in text.splitlines() if not ln.strip().startswith("#")]  # noqa: E731
    assert code(rendered) == code(draft.program)
    _, variant = substitute(record, {"apples": 20})
    assert (
        render_program(
            dataclasses.replace(
                record,
                generated_program=variant,
                variables={
                    **record.variables,
                    "apples": {**record.variables["apples"], "value": 20},
                },
            )
        )
        != rendered
    )


def test_synthesis_uses_percentages_and_written_equations():
    draft = synthesize(
        "t/2",
        "A shirt costs $40 and is 25% off. How much is it now?",
        "The discount is 40*.25 = $<<40*.25=10>>10.\nSo it costs 40 - 10 = $30 now.\n#### 30",
    )
    assert "(percent_off / 100)" in draft.program
    assert (
        draft.general_problem
        == "A shirt costs ${shirt_costs} and is {percent_off}% off. How much is it now?"
    )
    ns: dict = {}
    exec(compile(draft.program, "<draft>", "exec"), ns)  # our own generated code, not data
    assert ns["solution"]() == 30


def test_synthesis_rejections_have_reasons():
    with pytest.raises(ConversionError) as err:
        synthesize("t/3", "How many?", "It is just 5.\n#### 5")
    assert err.value.reason == "no_arithmetic"
    with pytest.raises(ConversionError) as err:
        synthesize("t/4", "Tom has 3 and 4. How many?", "3+4=<<3+4=7>>7\n#### 8")
    assert err.value.reason == "answer_not_computed"


def test_converter_programs_execute_to_golds_in_sandbox(executor):
    items = read_gsm8k(TRAIN)
    sample = random.Random(4).sample(items, 60)
    report = convert(sample, executor)
    assert len(report.records) + len(report.rejections) == 60
    assert report.yield_fraction >= 0.9
    outcomes = run_programs(executor, [r.generated_program for r in report.records])
    for record, outcome in zip(report.records, outcomes, strict=True):
        assert Fraction(outcome.answer) == Fraction(str(record.ori_answer)), record.id
    assert all(r.reason != "execution_mismatch" for r in report.rejections)


def test_converter_cli_writes_records_and_rejections(tmp_path):
    source = tmp_path / "g.jsonl"
    rows = [
        {
            "question": "Ann has 4 pens and buys 3 more. How many pens?",
            "answer": "4+3=<<4+3=7>>7\n#### 7",
        },
        {"question": "How many?", "answer": "Just 5.\n#### 5"},
    ]
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    output = tmp_path / "out" / "p.jsonl.gz"
    assert gsm8k_to_programs.main([f"--input={source}", f"--output={output}", "--workers=1"]) == 0
    records, _ = read_program_records(output)
    assert [(r.id, r.gen_answer, r.ori_answer) for r in records] == [("gsm8k/train/0", "7", 7)]
    assert (
        records[0].general_problem
        == "Ann has {pens} pens and buys {pens_buys} more. How many pens?"
    )
    rejected = [json.loads(line) for line in (tmp_path / "out" / "p.rejected.jsonl").open()]
    assert [(r["id"], r["reason"]) for r in rejected] == [("gsm8k/train/1", "no_arithmetic")]


def test_read_gsm8k_names_file_and_line(tmp_path):
    path = tmp_path / "g.jsonl"
    path.write_text('{"question": "q", "answer": "a"}\n{"question": 3}\n')
    with pytest.raises(RecordError, match=r"g\.jsonl:2: field 'question'"):
        read_gsm8k(path)


def test_shipped_program_data_is_in_released_layout():
    records, skipped = read_program_records(PROGRAMS)
    assert not skipped and len(records) >= 0.9 * 7473
    with gzip.open(PROGRAMS, "rt", encoding="utf-8") as handle:
        assert list(json.loads(handle.readline())) == [
            "id", "source", "original_problem", "general_problem", "generated_program",
            "variables", "ori_answer", "gen_answer",
        ]  # fmt: skip
    for record in records[:300]:
        assert record.generated_program.startswith('def solution():\n    """')
        if record.variables:
            check_substitutable(record)


def test_substitute_and_checks():
    rec = ProgramRecord(
        "r", "s", "Tom has 3 cats and $2.50.", "Tom has {cats} cats and ${cash}.",
        "def solution():\n    cats = 3\n    cash = 2.50\n    return cats * cash",
        {"cats": {"value": 3}, "cash": {"value": 2.5, "decimals": 2}}, 7.5, "7.5",
    )  # fmt: skip
    problem, program = substitute(rec, {"cats": 4, "cash": 1.25})
    assert problem == "Tom has 4 cats and $1.25."
    assert "    cats = 4\n    cash = 1.25\n" in program
    broken = ProgramRecord(**{**rec.__dict__, "general_problem": "Tom has {cats} cats."})
    with pytest.raises(SubstitutionError) as err:
        check_substitutable(broken)
    assert err.value.reason == "placeholder_missing"
    assert well_formed("7", "10") is None
    assert well_formed("7.5", "10") == "not_integer"
    assert well_formed("0", "10") == "sign_changed"
    assert well_formed("100000", "10") == "magnitude"
    assert well_formed("1.2345", "1.5") == "too_many_decimals"


def test_variable_draws_stay_in_range_and_on_grid():
    spec = infer_spec(Fraction(48), 0, False, False, False)
    rng = random.Random(0)
    for _ in range(200):
        value = draw_value(spec, rng)
        assert spec["range"][0] <= value <= spec["range"][1]
        assert value % spec["step"] == 0 and value != 48
    pct = infer_spec(Fraction(25), 0, False, True, False)
    assert "percentage" in pct["constraints"] and pct["range"][1] <= 100


def test_repopulation_reexecutes_and_is_deterministic(executor):
    records, _ = read_program_records(PROGRAMS)
    sample = [r for r in records[:400] if r.variables][:25]
    stream, stats = repopulate(sample, executor, variants=2, seed=7)
    first = list(stream)
    again, _ = repopulate(sample, executor, variants=2, seed=7)
    assert [v.to_json() for v in first] == [v.to_json() for v in again]
    other, _ = repopulate(sample, executor, variants=2, seed=8)
    assert [v.original_problem for v in first] != [v.original_problem for v in other]
    assert stats.variants == len(first) >= 25 and stats.records == 25
    outcomes = run_programs(executor, [v.generated_program for v in first])
    for variant, outcome in zip(first, outcomes, strict=True):
        assert outcome.answer == variant.gen_answer, variant.id
        seed = next(r for r in sample if variant.id.startswith(r.id + "/v"))
        assert variant.original_problem != seed.original_problem
        assert Fraction(variant.gen_answer).denominator == 1  # integer golds stay integers


def test_candidates_depend_only_on_seed_and_id():
    records, _ = read_program_records(PROGRAMS)
    record = next(r for r in records if len(r.variables) >= 2)
    a = draw_candidates(record, 4, seed=1)
    b = draw_candidates(record, 4, seed=1)
    assert [c.values for c in a] == [c.values for c in b] and len(a) == 4


def test_shipped_variants_reexecute_to_recorded_answers(executor):
    variants, _ = read_program_records(VARIANTS)
    assert len(variants) > 10000
    sample = random.Random(1).sample(variants, 40)
    outcomes = run_programs(executor, [v.generated_program for v in sample])
    assert [o.answer for o in outcomes] == [v.gen_answer for v in sample]


def test_gsm8k_plus_groups_originals_and_verified_variants(tmp_path, executor):
    source = tmp_path / "test.jsonl"
    lines = (DATA / "gsm8k" / "gsm8k_test.jsonl").read_text().splitlines()[:6]
    source.write_text("\n".join(lines) + "\n")
    output = tmp_path / "plus" / "gsm8k_plus.jsonl"
    summary = gsm8k_plus.build(source, output, variants=2, seed=0, executor=executor)
    rows = [json.loads(line) for line in output.open()]
    assert summary["problems"] == 6 and summary["rows"] == len(rows)
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["group"], []).append(row)
    assert len(groups) == 6
    for group, members in groups.items():
        assert [m["variant"] for m in members] == list(range(len(members)))
        original = json.loads(lines[int(group.rsplit("/", 1)[1])])
        assert members[0]["question"] == original["question"]
        assert members[0]["answer"] == original["answer"].rsplit("####", 1)[1].strip()
        assert all(m["question"] != original["question"] for m in members[1:])
    assert summary["with_all_variants"] >= 3
    assert json.loads((output.parent / "summary.json").read_text()) == summary


def test_repopulates_foreign_records_with_bare_variable_values(executor):
    line = json.dumps(
        {
            "id": "foreign/1",
            "source": "gsm8k",
            "problem_text": "A box has 12 apples shared by 3 kids. How many does each kid get?",
            "general_problem": "A box has {apples} apples shared by {kids} kids. How many does each kid get?",
            "generated_program": "def solution():\n    apples = 12\n    kids = 3\n    return apples / kids",
            "variables": "{'apples': 12, 'kids': {'value': 3, 'range': 'few'}}",
            "ori_answer": "4",
            "gen_answer": 4.0,
        }
    )
    record = ProgramRecord.from_json(
        line, "f.jsonl:1", FieldMap.parse("original_problem=problem_text")
    )
    stream, stats = repopulate([record], executor, variants=3, seed=0, tries=4)
    variants = list(stream)
    assert len(variants) == 3 and stats.skipped_records == {}
    for variant in variants:
        apples, kids = (variant.variables[n]["value"] for n in ("apples", "kids"))
        assert variant.original_problem.startswith(
            f"A box has {apples} apples shared by {kids} kids"
        )
        assert Fraction(variant.gen_answer) == Fraction(apples, kids) and apples % kids == 0


def test_context_words_match_the_regex_and_take_linear_time():
    """`_last_words` equals the regex it replaces on random text, and handles a 2 MB word (the regex
    backtracked quadratically: 20 KB took 6 s, so this input would not finish)."""
    import random
    import re

    from tpu_train.data.gsm8k_programs import _context, _last_words

    rng = random.Random(0)
    for _ in range(2000):
        text = "".join(rng.choice(["a", "bb", " ", "  ", "\t", "c.", "\n"]) for _ in range(12))
        assert _last_words(text, 5) == re.search(r"(?:\S+\s+){0,5}\S*$", text).group(0)
    word = "x" * 2_000_000
    assert _context(f"Tom has {word} and {{n}} apples.", "n").endswith("{n} apples")


def test_repopulate_refuses_its_input_as_output_and_keeps_earlier_output(tmp_path):
    from tpu_train.data import repopulate as repopulate_cli
    from tpu_train.data.records import atomic_output

    records, _ = read_program_records(PROGRAMS)
    source = tmp_path / "in.jsonl"
    write_jsonl(source, records[:2])
    before = source.read_bytes()
    with pytest.raises(SystemExit):
        repopulate_cli.main([f"--input={source}", f"--output={source}"])
    assert source.read_bytes() == before
    # A failure mid-write leaves the earlier file as it was, and no partial file beside it.
    with pytest.raises(RuntimeError), atomic_output(source) as handle:
        handle.write("half a line")
        raise RuntimeError("crash")
    assert source.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == [
        "in.jsonl"
    ]
