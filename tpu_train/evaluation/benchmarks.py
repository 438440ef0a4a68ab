"""Loaders for the ten evaluation sets in ``eval/``, all turned into one record shape.

Each loader knows its file's field names and answer conventions (see ``eval/`` and
``../shared/data/README.md``). Bad input raises :class:`BenchmarkFormatError` naming the file,
the line or index, and the field. Quirks are kept, never dropped: a MATH solution without a
``\\boxed{}`` keeps an empty gold, which the oracle check reports as unscorable.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable, Iterator

from tpu_train import jsonl
from tpu_train.evaluation import extract

EVAL_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "eval")


class BenchmarkFormatError(jsonl.JsonlError):
    """A benchmark file does not have the shape its loader expects."""


@dataclasses.dataclass(frozen=True)
class Record:
    """One benchmark item: gold is a string; options are option texts in letter order."""

    id: str
    dataset: str
    question: str
    gold: str
    answer_type: str
    options: tuple[str, ...] | None = None


def _jsonl(path: str) -> Iterator[tuple[int, str, dict]]:
    """Yield (0-based record index, "file:line" for messages, row)."""
    for index, (where, row) in enumerate(jsonl.objects(path, BenchmarkFormatError)):
        yield index, where, row


def _json_array(path: str) -> Iterator[tuple[int, str, dict]]:
    with open(path, encoding="utf-8") as handle:
        try:
            rows = json.load(handle)
        except json.JSONDecodeError as exc:
            raise BenchmarkFormatError(f"{path}: invalid JSON ({exc})") from None
    if not isinstance(rows, list):
        raise BenchmarkFormatError(f"{path}: expected a JSON array")
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise BenchmarkFormatError(f"{path}[{index}]: expected an object")
        yield index, f"{path}[{index}]", row


def _field(row: dict, key: str, where: str, types: type | tuple[type, ...] = str):
    if key not in row:
        raise BenchmarkFormatError(f"{where}: missing field {key!r}")
    value = row[key]
    if not isinstance(value, types):
        raise BenchmarkFormatError(
            f"{where}: field {key!r} is {type(value).__name__}, expected {types}"
        )
    return value


def _number_text(value: int | float | str) -> str:
    """Python's own spelling (``51.0`` stays ``51.0``: its decimals matter to the grader)."""
    return str(value)


def load_gsm8k(path: str) -> Iterator[Record]:
    for index, where, row in _jsonl(path):
        answer = _field(row, "answer", where)
        if "####" not in answer:
            raise BenchmarkFormatError(f"{where}: field 'answer' has no '#### ' final answer")
        gold = answer.rsplit("####", 1)[1].strip().replace(",", "")
        question = _field(row, "question", where)
        yield Record(f"gsm8k/{index}", "gsm8k", question, gold, "number")


def load_math(path: str) -> Iterator[Record]:
    for _, where, row in _jsonl(path):
        gold = extract.last_boxed(_field(row, "solution", where)) or ""
        rid = _field(row, "id", where)
        yield Record(f"math/{rid}", "math", _field(row, "problem", where), gold.strip(), "latex")


def load_aqua(path: str) -> Iterator[Record]:
    for index, where, row in _jsonl(path):
        options = tuple(_field(row, "options", where, list))
        question = _field(row, "question", where)
        full = question + "\nAnswer Choices: " + " ".join(f"({o[:1]}) {o[2:]}" for o in options)
        gold = _field(row, "correct", where).strip()
        yield Record(f"aqua/{index}", "aqua", full, gold, "choice", options)


def load_numglue(path: str) -> Iterator[Record]:
    for index, where, row in _json_array(path):
        gold = str(_field(row, "answer", where, (int, float, str))).strip()
        if re.fullmatch(r"-?[\d.,]+", gold):
            kind = "number"
        elif re.fullmatch(r"[A-Ea-e]", gold):
            kind = "choice"
        else:
            kind = "text"
        question = _field(row, "question", where)
        yield Record(f"numglue/{index}", "numglue", question, gold, kind)


def load_svamp(path: str) -> Iterator[Record]:
    for _, where, row in _json_array(path):
        body, question = _field(row, "Body", where), _field(row, "Question", where)
        gold = _number_text(_field(row, "Answer", where, (int, float)))
        rid = _field(row, "ID", where)
        yield Record(f"svamp/{rid}", "svamp", f"{body.strip()} {question.strip()}", gold, "number")


def load_mathematics(path: str) -> Iterator[Record]:
    for index, where, row in _json_array(path):
        gold = _field(row, "answer", where).strip()
        question = _field(row, "question", where)
        yield Record(f"mathematics/{index}", "mathematics", question, gold, "expression")


def load_simuleq(path: str) -> Iterator[Record]:
    for index, where, row in _json_array(path):
        gold = str(_field(row, "answer", where, (str, int, float))).strip()
        question = _field(row, "question", where)
        yield Record(f"simuleq/{index}", "simuleq", question, gold, "number")


def load_sat(path: str) -> Iterator[Record]:
    for index, where, row in _json_array(path):
        question = _field(row, "question", where)
        _, options = extract.split_inline_choices(question)
        gold = _field(row, "answer", where).strip()
        opts = tuple(options) if options else None
        yield Record(f"sat/{index}", "sat", question, gold, "choice", opts)


def load_mmlu(path: str) -> Iterator[Record]:
    for index, where, row in _json_array(path):
        choices = _field(row, "choices", where, list)
        answer = _field(row, "answer", where, int)
        if not 0 <= answer < len(choices) <= 5:
            raise BenchmarkFormatError(f"{where}: field 'answer' {answer} outside the choices")
        question = _field(row, "question", where)
        full = (
            question
            + "\nAnswer Choices: "
            + " ".join(f"({'ABCDE'[i]}) {c}" for i, c in enumerate(choices))
        )
        options = tuple(str(c) for c in choices)
        rid = f"mmlu_mathematics/{index}"
        yield Record(rid, "mmlu_mathematics", full, "ABCDE"[answer], "choice", options)


_THEOREMQA_TYPES = {
    "integer": "number",
    "float": "number",
    "bool": "bool",
    "list of integer": "list",
    "list of float": "list",
    "option": "choice",
}


def load_theoremqa(path: str) -> Iterator[Record]:
    for _, where, row in _json_array(path):
        answer_type = _field(row, "Answer_type", where)
        if answer_type not in _THEOREMQA_TYPES:
            raise BenchmarkFormatError(f"{where}: unknown Answer_type {answer_type!r}")
        answer = _field(row, "Answer", where, (int, float, bool, str, list))
        if isinstance(answer, list):
            gold = "[" + ", ".join(_number_text(a) for a in answer) + "]"
        else:
            gold = _number_text(answer)
        if answer_type == "option":
            letter = extract.explicit_letter(gold)
            if letter is None:
                raise BenchmarkFormatError(f"{where}: option answer {gold!r} is not a letter")
            gold = letter
        rid = f"theoremqa/{_field(row, 'id', where)}"
        question = _field(row, "Question", where)
        yield Record(rid, "theoremqa", question, gold, _THEOREMQA_TYPES[answer_type])


LOADERS: dict[str, tuple[str, Callable[[str], Iterator[Record]]]] = {
    "gsm8k": ("gsm8k_test.jsonl", load_gsm8k),
    "math": ("math_test.jsonl", load_math),
    "aqua": ("aqua.jsonl", load_aqua),
    "numglue": ("numglue.json", load_numglue),
    "svamp": ("svamp.json", load_svamp),
    "mathematics": ("mathematics.json", load_mathematics),
    "simuleq": ("simuleq.json", load_simuleq),
    "sat": ("sat.json", load_sat),
    "mmlu_mathematics": ("mmlu_mathematics.json", load_mmlu),
    "theoremqa": ("theoremqa.json", load_theoremqa),
}
DATASETS = tuple(LOADERS)
GSM8K_PLUS = (
    "gsm8k_plus"  # the robustness set (tpu_train.data.gsm8k_plus): not one of the nine + TheoremQA
)


def load_gsm8k_plus(eval_dir: str = EVAL_DIR) -> list[Record]:
    """GSM8K test problems and their number variants; `id` of a variant is `<problem id>/v<k>`, so the
    problem (its group) is the id up to `/v`."""
    path = os.path.join(eval_dir, "gsm8k_plus", "gsm8k_plus.jsonl")
    return [
        Record(row["id"], GSM8K_PLUS, row["question"], str(row["answer"]), "number")
        for _, _, row in _jsonl(path)
    ]


def load(dataset: str, eval_dir: str = EVAL_DIR) -> list[Record]:
    """All records of one dataset, in file order."""
    if dataset not in LOADERS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {DATASETS}")
    filename, loader = LOADERS[dataset]
    return list(loader(os.path.join(eval_dir, filename)))
