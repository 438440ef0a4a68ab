"""InfinityMATH-layout program records and strict JSONL reading.

InfinityMATH's released file has eight fields per line. Seven names are known (`id`, `source`,
`general_problem`, `generated_program`, `variables`, `ori_answer`, `gen_answer`); the field holding the
original problem text is not confirmed, so it is read through `FieldMap`, which accepts aliases and a
user mapping. Every parse error names the file, the line and the field.

Example:
    >>> rec = ProgramRecord(id="gsm8k/0", source="gsm8k", original_problem="Tom has 3 cats.",
    ...     general_problem="Tom has {cats} cats.", generated_program="def solution():\\n    return 3",
    ...     variables={"cats": {"value": 3}}, ori_answer=3, gen_answer="3")
    >>> ProgramRecord.from_json(rec.to_json(), where="x.jsonl:1").variables["cats"]["value"]
    3
"""

from __future__ import annotations

import ast
import contextlib
import gzip
import json
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tpu_train import jsonl

ORIGINAL_PROBLEM_ALIASES = (
    "original_problem",
    "ori_problem",
    "problem",
    "question",
    "original_question",
    "seed_problem",
)


class RecordError(jsonl.JsonlError):
    """A line that cannot be interpreted; the message names file, line and field."""


@dataclass(frozen=True)
class FieldMap:
    """Where each logical field lives in a source line.

    `mapping` maps logical names (`original_problem`, `variables`, ...) to the names used in the file;
    unmapped logical names are looked up under their own name, and `original_problem` also under
    `ORIGINAL_PROBLEM_ALIASES`.

    Example:
        >>> FieldMap.parse("original_problem=seed,variables=vars").mapping["original_problem"]
        'seed'
    """

    mapping: Mapping[str, str] = field(default_factory=dict)

    @staticmethod
    def parse(spec: str) -> FieldMap:
        """Parse "logical=actual,logical=actual" (empty string: no mapping)."""
        pairs = {}
        for item in filter(None, (part.strip() for part in spec.split(","))):
            if "=" not in item:
                raise ValueError(f"field mapping item {item!r} is not of the form logical=actual")
            logical, actual = (s.strip() for s in item.split("=", 1))
            pairs[logical] = actual
        return FieldMap(pairs)

    def lookup(self, row: Mapping[str, Any], logical: str, where: str) -> Any:
        """The value of `logical` in `row`; raises RecordError naming `where` if absent."""
        names = [self.mapping.get(logical, logical)]
        if logical == "original_problem" and logical not in self.mapping:
            names += [n for n in ORIGINAL_PROBLEM_ALIASES if n != logical]
        for name in names:
            if name in row:
                return row[name]
        raise RecordError(
            f"{where}: field {logical!r} missing (looked for {names}; line has {sorted(row)})"
        )


def parse_variables(raw: Any, where: str) -> dict[str, dict[str, Any]]:
    """Normalise a `variables` field to {name: {"value": number, ...}}.

    Accepts a dict or a JSON / Python-literal string of one; each entry may be a bare number or a
    dict with at least "value" (ranges and constraints are kept as given).

    Example:
        >>> parse_variables("{'a': 2, 'b': {'value': 1.5, 'range': [1, 3]}}", "f:1")["b"]["range"]
        [1, 3]
    """
    if isinstance(raw, str):
        text = raw.strip()
        try:
            raw = json.loads(text) if text else {}
        except json.JSONDecodeError:
            try:
                raw = ast.literal_eval(text)
            except (ValueError, SyntaxError) as err:
                raise RecordError(
                    f"{where}: field 'variables' is not a dict literal: {err}"
                ) from err
    if not isinstance(raw, dict):
        raise RecordError(f"{where}: field 'variables' must be a dict, got {type(raw).__name__}")
    out: dict[str, dict[str, Any]] = {}
    for name, spec in raw.items():
        entry = dict(spec) if isinstance(spec, dict) else {"value": spec}
        value = entry.get("value")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise RecordError(f"{where}: field 'variables' entry {name!r} has no numeric value")
        out[str(name)] = entry
    return out


@dataclass(frozen=True)
class ProgramRecord:
    """One InfinityMATH-layout record: a number-masked problem and its function-style program."""

    id: str
    source: str
    original_problem: str
    general_problem: str
    generated_program: str
    variables: dict[str, dict[str, Any]]
    ori_answer: Any
    gen_answer: str

    def to_json(self) -> str:
        """One JSON line in the released layout (original problem under `original_problem`)."""
        return json.dumps(
            {
                "id": self.id,
                "source": self.source,
                "original_problem": self.original_problem,
                "general_problem": self.general_problem,
                "generated_program": self.generated_program,
                "variables": self.variables,
                "ori_answer": self.ori_answer,
                "gen_answer": self.gen_answer,
            },
            ensure_ascii=False,
        )

    @staticmethod
    def from_json(line: str, where: str, fields: FieldMap | None = None) -> ProgramRecord:
        """Parse one line; `where` ("file:line") prefixes every error message."""
        fields = fields or FieldMap()
        row = jsonl.parse_object(line, where, RecordError)
        text_fields = {}
        for name in ("id", "source", "original_problem", "general_problem", "generated_program"):
            value = fields.lookup(row, name, where)
            if isinstance(value, int) and name == "id":
                value = str(value)
            if not isinstance(value, str):
                raise RecordError(f"{where}: field {name!r} must be a string, got {value!r:.60}")
            text_fields[name] = value
        ori = fields.lookup(row, "ori_answer", where)
        if not isinstance(ori, str | int | float) or isinstance(ori, bool):
            raise RecordError(
                f"{where}: field 'ori_answer' must be a number or string: {ori!r:.60}"
            )
        gen = fields.lookup(row, "gen_answer", where)
        if isinstance(gen, bool) or not isinstance(gen, str | int | float | type(None)):
            raise RecordError(
                f"{where}: field 'gen_answer' must be a number or string: {gen!r:.60}"
            )
        return ProgramRecord(
            variables=parse_variables(fields.lookup(row, "variables", where), where),
            ori_answer=ori,
            gen_answer="" if gen is None else str(gen),
            **text_fields,
        )


@contextlib.contextmanager
def atomic_output(path: str | Path, inputs: Sequence[str | Path] = ()) -> Iterator[IO[str]]:
    """A text file (".gz" compresses) written under a temporary name beside `path` and renamed into place
    only when the block completes: a failure mid-write leaves the earlier `path` untouched. Refuses a
    `path` that is one of `inputs` (writing it would destroy what is being read)."""
    path = Path(path)
    for source in inputs:
        if Path(source).resolve() == path.resolve():
            raise ValueError(f"{path}: the output is also an input; write to another file")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    try:
        compressed = str(path).endswith(".gz")
        opened = gzip.open(tmp, "wt", encoding="utf-8") if compressed else open(tmp, "w")  # noqa: SIM115
        with opened as handle:
            yield handle
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_program_records(
    path: str | Path, fields: FieldMap | None = None, skip_bad: bool = False
) -> tuple[list[ProgramRecord], list[str]]:
    """Read an InfinityMATH-layout JSONL file.

    Returns (records, skipped) where `skipped` lists the error message of each skipped line; with
    `skip_bad=False` (the default) the first bad line raises RecordError instead.
    """
    records, skipped = [], []
    for where, line in jsonl.lines(path):
        try:
            records.append(ProgramRecord.from_json(line, where, fields))
        except jsonl.JsonlError as err:
            if not skip_bad:
                raise
            skipped.append(str(err))
    return records, skipped


def write_jsonl(path: str | Path, records: list[ProgramRecord]) -> None:
    """Write records one JSON object per line (parent folders are created; ".gz" compresses), atomically
    (`atomic_output`)."""
    with atomic_output(path) as handle:
        for record in records:
            handle.write(record.to_json() + "\n")
