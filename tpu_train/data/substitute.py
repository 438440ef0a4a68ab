"""Putting new numbers into an InfinityMATH-format record (problem text and program).

The problem gets each value where `general_problem` has `{name}`; the program gets it in its single
top-level assignment `name = <number>`. A record whose placeholders or assignments cannot be found
is reported, never guessed at.

Example:
    >>> rec = ProgramRecord("r1", "demo", "Tom has 3 cats.", "Tom has {cats} cats.",
    ...     "def solution():\\n    cats = 3\\n    return cats * 2", {"cats": {"value": 3}}, 6, "6")
    >>> problem, program = substitute(rec, {"cats": 5})
    >>> problem, program.splitlines()[1]
    ('Tom has 5 cats.', '    cats = 5')
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Any

from tpu_train.data.records import ProgramRecord
from tpu_train.data.textnums import format_number


class SubstitutionError(ValueError):
    """A record whose numbers cannot be substituted; `reason` is a short category."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def _assignment_re(name: str) -> re.Pattern[str]:
    number = r"[-+]?(?:\d[\d_]*(?:\.\d*)?|\.\d+)"
    return re.compile(rf"^([ \t]*{re.escape(name)}[ \t]*=[ \t]*){number}(?=[ \t]*(?:#.*)?$)", re.M)


def text_value(spec: dict[str, Any], value: int | float) -> str:
    """How a value is written in the problem, following the spec's decimals and commas."""
    return format_number(
        Fraction(str(value)), int(spec.get("decimals", 0)), bool(spec.get("commas"))
    )


def code_value(spec: dict[str, Any], value: int | float) -> str:
    """How a value is written in the program (a Python literal)."""
    decimals = int(spec.get("decimals", 0))
    if decimals:
        return f"{float(value):.{decimals}f}"
    return str(int(value)) if Fraction(str(value)).denominator == 1 else repr(float(value))


def check_substitutable(record: ProgramRecord) -> None:
    """Raise SubstitutionError unless every variable has a placeholder and one assignment."""
    if not record.variables:
        raise SubstitutionError("no_variables", record.id)
    for name in record.variables:
        if "{" + name + "}" not in record.general_problem:
            raise SubstitutionError("placeholder_missing", f"{record.id}: {{{name}}}")
        count = len(_assignment_re(name).findall(record.generated_program))
        if count != 1:
            raise SubstitutionError(
                "assignment_missing", f"{record.id}: {count} assignments of {name!r} to a number"
            )


def substitute(record: ProgramRecord, values: dict[str, int | float]) -> tuple[str, str]:
    """Problem text and program with `values` (unlisted variables keep their own value)."""
    problem = record.general_problem
    program = record.generated_program
    for name, spec in record.variables.items():
        value = values.get(name, spec["value"])
        problem = problem.replace("{" + name + "}", text_value(spec, value))
        literal = code_value(spec, value)
        program = _assignment_re(name).sub(
            lambda m, lit=literal: m.group(1) + lit, program, count=1
        )
    return problem, program


def render_program(record: ProgramRecord) -> str:
    """The program as a model reads and writes it: `{name}` placeholders left in its comments and
    docstring are filled with the record's values, written as in the problem text.

    Stored programs stay number-independent (numbers only in the assignments, as InfinityMATH's are);
    code lines are never touched, so an f-string such as `f"{total}"` keeps its braces.

    Example:
        >>> rec = ProgramRecord("r1", "demo", "Tom has 3 cats.", "Tom has {cats} cats.",
        ...     "def solution():\\n    # Tom has {cats} cats\\n    cats = 3\\n    return cats * 2",
        ...     {"cats": {"value": 3}}, 6, "6")
        >>> render_program(rec).splitlines()[1]
        '    # Tom has 3 cats'
    """
    if not record.variables:
        return record.generated_program
    values = {name: text_value(spec, spec["value"]) for name, spec in record.variables.items()}
    placeholder = re.compile(r"\{(" + "|".join(map(re.escape, values)) + r")\}")
    fill = lambda text: placeholder.sub(lambda m: values[m.group(1)], text)  # noqa: E731
    lines, in_docstring = [], False
    for line in record.generated_program.split("\n"):
        quotes = line.count('"""') + line.count("'''")
        code, hash_, comment = line.partition("#")
        if in_docstring or quotes:
            line = fill(line)
        elif hash_ and not code.strip():
            line = code + hash_ + fill(comment)
        in_docstring ^= quotes % 2 == 1
        lines.append(line)
    return "\n".join(lines)
