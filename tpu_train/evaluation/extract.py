"""Pulling the final answer out of chain-of-thought text, the program out of a PoT output, and option
helpers.

Only explicit statements count: ``\\boxed{...}``, "The answer is ..." (or "Answer: ..."),
``#### ...``. A completion that states none has no answer, which strict grading counts as
wrong: the last number of a text is as often an intermediate result, a quantity from the
question or the start of a truncated sentence. MAmmoTH's scripts fall back to that last number,
so ``compat`` grading asks for the fallback (``last_number_fallback=True``) and only it does.
For multiple choice the only accepted CoT answer is an explicit letter; nothing defaults to "A".

    >>> extract_cot_answer("3 + 4 = 7 apples, then she buys 2 more", "number") is None
    True
    >>> extract_cot_answer("3 + 4 = 7 apples, then she buys 2 more", "number",
    ...                    last_number_fallback=True)
    '2'

A PoT output is run as it is, unless it holds a Markdown code fence (what chat models write around
code): then the first fenced block is the program, and the prose around it is not run.

    >>> pot_program("Here you go:\\n```python\\nprint(2 + 3)\\n```\\nThis prints 5.")
    'print(2 + 3)\\n'
    >>> pot_program("x = 1\\nprint(x)")
    'x = 1\\nprint(x)'
"""

from __future__ import annotations

import re

_FENCE = re.compile(
    r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL | re.IGNORECASE
)
_ANSWER_IS = re.compile(
    r"(?:the\s+(?:final\s+)?answer\s+is|final\s+answer\s*:|answer\s*:)\s*:?\s*(.+)",
    re.IGNORECASE,
)
_LETTER_ALONE = re.compile(r"^\(?\s*([A-Ea-e])\s*\)?[.:]?$")
_LETTER_PREFIX = re.compile(
    r"^(?:option|choice|answer)?\s*(?:is)?\s*:?\s*\(?\s*([A-E])\s*\)(?:\s|$|[.:,])"
    r"|^(?:option|choice)\s+\(?([A-E])\)?\b",
    re.IGNORECASE,
)
_OPTION_LABEL = re.compile(r"^\s*\(?([A-Ea-e])\s*[).:]\s*")
_SAT_CHOICES = re.compile(r"\(([A-E])\)\s*(.*?)(?=\s*\([A-E]\)|$)", re.DOTALL)


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` / ``\\fbox{...}``, braces balanced; None if absent."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    brace = text.find("{", start)
    if brace < 0:
        rest = text[start + len("\\boxed") :].strip()
        return rest.split("$")[0].strip() or None
    depth = 0
    for index in range(brace, len(text)):
        if text[index] == "{":
            depth += 1
        elif text[index] == "}":
            depth -= 1
            if depth == 0:
                return text[brace + 1 : index]
    return None


def _clean_tail(answer: str) -> str:
    answer = answer.strip().splitlines()[0] if answer.strip() else ""
    answer = answer.strip().strip("$").strip()
    return answer.rstrip(".").strip()


def explicit_letter(text: str | None, letters: str = "ABCDE") -> str | None:
    """The choice letter ``text`` states outright (``C``, ``(c)``, ``C)``, ``Option C``)."""
    if text is None:
        return None
    text = text.strip().strip("$").strip()
    text = re.sub(r"^\\text\{(.*)\}$", r"\1", text).strip()
    for pattern in (_LETTER_ALONE, _LETTER_PREFIX):
        match = pattern.match(text)
        if match:
            letter = next(g for g in match.groups() if g).upper()
            return letter if letter in letters else None
    return None


def extract_cot_answer(
    text: str, answer_type: str, *, last_number_fallback: bool = False
) -> str | None:
    """The stated final answer of a CoT completion, or None when it states none.

    ``last_number_fallback`` (compat mode only) takes the last number of a completion that
    states no answer, for number and expression answers, as MAmmoTH does.
    """
    if not text:
        return None
    boxed = last_boxed(text)
    stated = None
    matches = list(_ANSWER_IS.finditer(text))
    if matches:
        stated = _clean_tail(matches[-1].group(1))
        inner = last_boxed(stated) if "\\boxed" in stated else None
        stated = inner if inner is not None else stated
    if answer_type == "choice":
        for candidate in (stated, boxed):
            letter = explicit_letter(candidate)
            if letter:
                return letter
        return None
    if answer_type == "latex" and boxed is not None:
        return boxed.strip()
    if stated:
        return stated
    if boxed is not None:
        return boxed.strip()
    hashes = re.findall(r"####\s*(.+)", text)
    if hashes:
        return _clean_tail(hashes[-1])
    if last_number_fallback and answer_type in ("number", "expression"):
        numbers = re.findall(r"-?\d[\d,]*(?:\.\d+)?", text)
        if numbers:
            return numbers[-1].rstrip(",")
    return None


def strip_option_label(option: str) -> str:
    """``"A)5(√3 + 1)"`` -> ``"5(√3 + 1)"``."""
    return _OPTION_LABEL.sub("", option, count=1).strip()


def split_inline_choices(question: str) -> tuple[str, list[str]]:
    """SAT questions carry ``Answer Choices: (A) 2 (B) 4 ...`` inline; split them off."""
    head, sep, tail = question.partition("Answer Choices:")
    if not sep:
        return question, []
    return head.strip(), [m.group(2).strip() for m in _SAT_CHOICES.finditer(tail)]


def pot_program(output: str) -> str:
    """The program to run for a PoT output: its first fenced code block if it has one, else all of it."""
    match = _FENCE.search(output)
    return match.group(1) if match else output
