"""Turn a GSM8K problem into an InfinityMATH-style, number-independent program (no LLM).

Each calculator annotation `<<a op b=c>>` of the rationale becomes one assignment. Every number literal
in it is bound, in order of preference, to an earlier step with that value (while that step is still
unused), to a number of the question (which becomes a named variable and a `{placeholder}` in
`general_problem`), to a question percentage (`pct / 100`), or else kept as a constant (2 for "half",
60 minutes, ...). Small values that a unit word in the question could explain ("half" -> 2, "dozen"
-> 12, "%" -> 100) stay constants, so a coincidental "2 dogs" is never tied to "half". Only steps the
answer depends on are kept, and only question numbers those steps use are masked, so changing a
variable can change nothing the program does not model.

Example:
    >>> draft = synthesize("g/1", "Tom has 5 red and 7 blue pens. How many pens?",
    ...     "Tom has 5+7=<<5+7=12>>12 pens.\\n#### 12")
    >>> draft.general_problem
    'Tom has {red} red and {blue_pens} blue pens. How many pens?'
    >>> print(draft.program)
    def solution():
        \"\"\"How many pens?\"\"\"
        # Tom has {red} red and {blue_pens}
        red = 5
        # Tom has {red} red and {blue_pens} blue pens
        blue_pens = 7
        # Tom has pens.
        pens = red + blue_pens
        result = pens
        return result
"""

from __future__ import annotations

import builtins
import keyword
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from tpu_train.data.annotations import Annotation, AnnotationError, Literal, parse_annotation
from tpu_train.data.textnums import NumberMention, find_numbers, parse_plain_decimal
from tpu_train.data.variables import infer_spec

_ANNOTATION_RE = re.compile(r"<<([^<>]*)>>")
_NUM = r"\$?(?:\d[\d,]*(?:\.\d+)?|\.\d+)"
_TEXT_EQUATION_RE = re.compile(
    rf"(\(?\s*{_NUM}(?:\s*\)?\s*[-+*/x×÷]\s*\(?\s*{_NUM})+\s*\)?)\s*=\s*\$?(\d[\d,]*(?:\.\d+)?)(?![\d\x00])"
)
_TIMES_RE = re.compile(r"(?<=[\d\s)])[x×](?=[\s\d$(])")
_WORD_RE = re.compile(r"[A-Za-z]+")
_STOPWORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "of",
        "and",
        "or",
        "to",
        "in",
        "on",
        "at",
        "for",
        "by",
        "from",
        "with",
        "per",
        "each",
        "every",
        "more",
        "less",
        "than",
        "as",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "his",
        "her",
        "their",
        "its",
        "he",
        "she",
        "it",
        "they",
        "them",
        "this",
        "that",
        "these",
        "those",
        "which",
        "who",
        "what",
        "how",
        "many",
        "much",
        "total",
        "if",
        "then",
        "so",
        "also",
        "all",
        "some",
        "any",
        "there",
        "here",
        "has",
        "have",
        "had",
        "will",
        "would",
        "can",
        "could",
        "into",
        "out",
        "up",
        "down",
        "over",
        "about",
        "than",
        "times",
        "x",
    ]
)
# Values a word in the question can explain without the question writing the number.
_UNIT_WORDS: dict[int, tuple[str, ...]] = {
    1: ("one", "once", "single", "each", "every", "per", "a", "an"),
    2: ("half", "twice", "double", "pair", "both", "two", "halves", "second"),
    3: ("triple", "thrice", "third", "three"),
    4: ("quarter", "fourth", "four", "quadruple"),
    5: ("fifth", "five", "nickel"),
    6: ("six", "sixth"),
    7: ("week", "seven", "seventh"),
    8: ("eight", "eighth"),
    9: ("nine", "ninth"),
    10: ("ten", "tenth", "dime", "decade"),
    11: ("eleven",),
    12: ("dozen", "year", "month", "foot", "feet", "inch", "twelve"),
    20: ("twenty", "score"),
    24: ("day", "hour"),
    25: ("quarter", "twenty-five"),
    30: ("month", "thirty"),
    40: ("forty",),
    50: ("fifty", "half"),
    52: ("year", "week"),
    60: ("hour", "minute", "second", "sixty"),
    100: ("percent", "%", "cent", "century", "hundred", "meter"),
    365: ("year",),
    1000: ("thousand", "kilo", "gram", "liter", "litre", "meter"),
}


class ConversionError(ValueError):
    """A problem that cannot be turned into a program; `reason` is a short category."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Ref:
    """A reference from an expression to a question variable ("var") or an earlier step ("step")."""

    kind: str
    index: int
    percent: bool = False


@dataclass(frozen=True)
class Step:
    """One annotation turned into an assignment (names are given later)."""

    tokens: tuple[Ref | str, ...]
    value: Fraction
    comment: str
    name_hint: str


@dataclass(frozen=True)
class Draft:
    """A synthesized, not yet executed program with its InfinityMATH fields."""

    id: str
    original_problem: str
    general_problem: str
    program: str
    variables: dict[str, dict[str, Any]]
    answer: Fraction


def _words_after(text: str, start: int, limit: int = 2) -> list[str]:
    """Up to `limit` content words after `start`, within the same clause."""
    clause = re.split(r"[.,;:!?](?:\s|$)|\d", text[start : start + 60], maxsplit=1)[0]
    words = []
    for match in _WORD_RE.finditer(clause):
        word = match.group(0).lower()
        if word in _STOPWORDS or len(word) < 2:
            if words:
                break
            continue
        words.append(word)
        if len(words) == limit:
            break
    return words


def _words_before(text: str, end: int) -> list[str]:
    """The last two content words before `end` in the same clause."""
    clause = re.split(r"[.,;:!?]\s|\d", text[max(0, end - 60) : end])[-1]
    words = [w.lower() for w in _WORD_RE.findall(clause) if w.lower() not in _STOPWORDS]
    return [w for w in words if len(w) > 1][-2:]


def _identifier(words: list[str], fallback: str, taken: set[str]) -> str:
    base = "_".join(words) or fallback
    if keyword.iskeyword(base) or hasattr(builtins, base) or base in {"math", "solution", "result"}:
        base += "_value"
    name, n = base, 2
    while name in taken:
        name, n = f"{base}_{n}", n + 1
    taken.add(name)
    return name


def _is_unit_constant(value: Fraction, question_lower: str) -> bool:
    """Whether a unit word of the question ("half", "dozen", "weeks", "%") could explain `value`."""
    if value.denominator != 1:
        return False
    words = set(_WORD_RE.findall(question_lower))
    for unit in _UNIT_WORDS.get(int(value), ()):
        if unit == "%":
            if "%" in question_lower:
                return True
        elif unit in words or unit + "s" in words or unit + "es" in words:
            return True
    return False


def _maskable(question: str, mention: NumberMention) -> bool:
    """Fractions ("1/2"), times ("3:30") and ordinals are kept as written."""
    before, after = question[: mention.start], question[mention.end :]
    return not (
        before.endswith(("/", ":"))
        or re.match(r"/\d|:\d", after)
        or re.match(r"(st|nd|rd|th)\b", after)
    )


def _format_tokens(tokens: tuple[Ref | str, ...], names: dict[tuple[str, int], str]) -> str:
    out = []
    for token in tokens:
        if isinstance(token, Ref):
            name = names[(token.kind, token.index)]
            out.append(f"({name} / 100)" if token.percent else name)
        else:
            out.append(token)
    code = " ".join(out)
    code = re.sub(r"\( ", "(", code)
    code = re.sub(r" \)", ")", code)
    return re.sub(r"(^|[(*/+-] )- ", r"\1-", code)


def _literal_code(literal: Literal) -> str:
    value = literal.value
    if value.denominator == 1:
        return str(int(value))
    text = literal.text.rstrip("0")
    return "0" + text if text.startswith(".") else text


def _docstring(general_problem: str) -> str:
    sentences = re.split(r"(?<=[.!?])\s+", general_problem.strip())
    questions = [s for s in sentences if s.endswith("?")]
    text = questions[-1] if questions else sentences[-1]
    return text.replace("\\", "/").replace('"""', "'''").strip().rstrip('"')


def _comment(text: str, mapping: dict[Fraction, str]) -> str:
    text = _ANNOTATION_RE.sub("", text).replace("\n", " ").strip()
    pieces, last = [], 0
    for mention in find_numbers(text):
        if mention.value in mapping:
            pieces += [text[last : mention.start], mapping[mention.value]]
            last = mention.end
    pieces.append(text[last:])
    text = re.sub(r"\s+", " ", "".join(pieces)).strip()
    text = re.sub(r"\s+([.,;:!?])", r"\1", text)
    return text.lstrip(".,;:!? ")


def _line_equations(line: str, problem_id: str) -> list[tuple[int, int, Annotation]]:
    """Annotations `<<e=r>>` and, outside them, written equations "e = r" whose arithmetic holds."""
    found = []
    for match in _ANNOTATION_RE.finditer(line):
        try:
            found.append((match.start(), match.end(), parse_annotation(match.group(1))))
        except AnnotationError as err:
            raise ConversionError("bad_annotation", f"{problem_id}: {err}") from err
    blanked = _ANNOTATION_RE.sub(lambda m: "\x00" * len(m.group(0)), line)
    for match in _TEXT_EQUATION_RE.finditer(blanked):
        expr = _TIMES_RE.sub("*", match.group(1)).replace("÷", "/")
        expr = expr.replace("$", "").replace(",", "")
        if not re.search(r"[-+*/]", expr):
            continue
        try:
            annotation = parse_annotation(f"{expr}={match.group(2).replace(',', '')}")
        except AnnotationError:
            continue
        if annotation.value == annotation.stated:
            found.append((match.start(1), match.end(), annotation))
    return sorted(found, key=lambda item: item[0])


def _parse_gold(answer: str, problem_id: str) -> Fraction:
    if "####" not in answer:
        raise ConversionError("no_final_answer", f"{problem_id}: answer has no '####' line")
    gold_text = answer.rsplit("####", 1)[1].strip()
    try:
        return parse_plain_decimal(gold_text)
    except ValueError as err:
        raise ConversionError("non_numeric_answer", f"{problem_id}: {gold_text!r}") from err


def synthesize(problem_id: str, question: str, answer: str) -> Draft:
    """Build the program for one GSM8K item (see the module example).

    Raises:
        ConversionError: with `reason` one of no_final_answer, non_numeric_answer, no_arithmetic,
            bad_annotation, answer_not_computed.
    """
    gold = _parse_gold(answer, problem_id)
    rationale = answer.rsplit("####", 1)[0]
    question_lower = question.lower()
    all_mentions = find_numbers(question)
    # A value also written where it cannot be masked ("1/2", "3:30") stays a constant everywhere.
    fixed = {m.value for m in all_mentions if not _maskable(question, m)}
    mentions = [m for m in all_mentions if m.value not in fixed]
    by_value: dict[Fraction, int] = {}
    groups: list[list[NumberMention]] = []
    for mention in mentions:
        if mention.value not in by_value:
            by_value[mention.value] = len(groups)
            groups.append([])
        groups[by_value[mention.value]].append(mention)
    percents = {g[0].value / 100: i for i, g in enumerate(groups) if any(m.percent for m in g)}

    steps: list[Step] = []
    used_steps: set[int] = set()
    for line in rationale.split("\n"):
        equations = _line_equations(line, problem_id)
        for k, (eq_start, eq_end, annotation) in enumerate(equations):
            tokens = tuple(
                token
                if isinstance(token, str)
                else _bind(token, steps, used_steps, by_value, percents, question_lower)
                for token in annotation.tokens
            )
            seg_start = equations[k - 1][1] if k else 0
            seg_end = equations[k + 1][0] if k + 1 < len(equations) else len(line)
            before = re.sub(r"[\d\s.,+\-*/x×÷=$()]+$", "", line[:eq_start])
            written = re.match(r"\s*\$?\d[\d,]*(?:\.\d+)?", line[eq_end:])
            after = eq_end + (written.end() if written else 0)
            hint = "_".join(_words_after(line, after) or _words_before(before, len(before)))
            # The comment is the sentence around the equation; the code line holds the arithmetic.
            text = line[seg_start : max(seg_start, len(before))] + " " + line[after:seg_end]
            steps.append(Step(tokens, annotation.value, text, hint))
    if not steps:
        raise ConversionError("no_arithmetic", f"{problem_id}: rationale has no arithmetic")
    answer_index = next((i for i in reversed(range(len(steps))) if steps[i].value == gold), None)
    if answer_index is None:
        raise ConversionError(
            "answer_not_computed",
            f"{problem_id}: no annotation computes the gold {gold} (last step gives "
            f"{steps[-1].value})",
        )
    return _assemble(problem_id, question, steps, answer_index, groups, gold)


def _bind(
    literal: Literal,
    steps: list[Step],
    used_steps: set[int],
    by_value: dict[Fraction, int],
    percents: dict[Fraction, int],
    question_lower: str,
) -> Ref | str:
    value = literal.value
    matching = [i for i in reversed(range(len(steps))) if steps[i].value == value]
    fresh = [i for i in matching if i not in used_steps]
    if fresh:
        used_steps.add(fresh[0])
        return Ref("step", fresh[0])
    unit = _is_unit_constant(value, question_lower)
    if value in by_value and not unit:
        return Ref("var", by_value[value])
    if matching:
        return Ref("step", matching[0])
    if value in percents and not _is_unit_constant(value * 100, question_lower.replace("%", "")):
        return Ref("var", percents[value], percent=True)
    return _literal_code(literal)


def _assemble(
    problem_id: str,
    question: str,
    steps: list[Step],
    answer_index: int,
    groups: list[list[NumberMention]],
    gold: Fraction,
) -> Draft:
    keep: set[int] = set()
    pending = [answer_index]
    used_vars: set[int] = set()
    while pending:
        index = pending.pop()
        if index in keep:
            continue
        keep.add(index)
        for token in steps[index].tokens:
            if isinstance(token, Ref) and token.kind == "step":
                pending.append(token.index)
            elif isinstance(token, Ref):
                used_vars.add(token.index)
    taken: set[str] = set()
    names: dict[tuple[str, int], str] = {}
    var_order = sorted(used_vars, key=lambda i: groups[i][0].start)
    for i in var_order:
        first = groups[i][0]
        words = _words_after(question, first.end) or _words_before(question, first.start)
        if any(m.percent for m in groups[i]):
            words = ["percent", *_words_after(question, first.end)][:2]
        names[("var", i)] = _identifier(words, "number", taken)
    for i in sorted(keep):
        names[("step", i)] = _identifier(
            steps[i].name_hint.split("_") if steps[i].name_hint else [], f"step_{i + 1}", taken
        )

    general = question
    masked = [(m, names[("var", i)]) for i in used_vars for m in groups[i]]
    for mention, name in sorted(masked, key=lambda pair: -pair[0].start):
        general = general[: mention.start] + "{" + name + "}" + general[mention.end :]

    variables: dict[str, dict[str, Any]] = {}
    lines = ["def solution():", f'    """{_docstring(general)}"""']
    for i in var_order:
        first = groups[i][0]
        name = names[("var", i)]
        spec = infer_spec(
            first.value,
            max(m.decimals for m in groups[i]),
            any(m.commas for m in groups[i]),
            any(m.percent for m in groups[i]),
            any(m.prefix == "$" for m in groups[i]),
        )
        variables[name] = spec
        lines.append(f"    # {_context(general, name)}")
        lines.append(f"    {name} = {spec['value']}")
    given = {groups[i][0].value: names[("var", i)] for i in var_order}
    for i in sorted(keep):
        step = steps[i]
        mapping = {steps[i].value: names[("step", i)]}
        for token in step.tokens:
            if isinstance(token, Ref):
                source = (
                    groups[token.index][0].value
                    if token.kind == "var"
                    else steps[token.index].value
                )
                mapping.setdefault(source, names[(token.kind, token.index)])
                if token.percent:
                    mapping.setdefault(source / 100, names[(token.kind, token.index)] + "%")
        for value, name in given.items():
            mapping.setdefault(value, name)
        comment = _comment(step.comment, mapping) or f"compute {names[('step', i)]}"
        lines.append(f"    # {comment}")
        lines.append(f"    {names[('step', i)]} = {_format_tokens(step.tokens, names)}")
    lines += [f"    result = {names[('step', answer_index)]}", "    return result"]
    return Draft(problem_id, question, general, "\n".join(lines), variables, gold)


def _last_words(text: str, count: int) -> str:
    """The end of `text` from `count` whole words before its last (possibly empty) word, in linear time:
    what `re.search(r"(?:\\S+\\s+){0,5}\\S*$", text)` matches, without its quadratic backtracking on
    a long word (every start position would be tried)."""
    parts = re.split(r"(\s+)", text)  # word, space, word, ..., last word ("" after trailing space)
    start = len(parts) - 1
    while start >= 2 and (len(parts) - 1 - start) // 2 < count and parts[start - 2]:
        start -= 2
    return "".join(parts[start:])


def _context(general: str, name: str) -> str:
    """The words of the problem around `{name}`: up to five before it in its sentence and up to three
    after it in its clause, e.g. "sold clips to {friends} of her friends".

    Quoting the words *before* the number is what lets a model find it: rendered with the numbers (see
    `substitute.render_program`), the comment continues a phrase of the question, so copying its number
    is the plain "what followed these words last time" lookup that attention learns early.
    """
    at = general.index("{" + name + "}")
    sentence = re.split(r"[.;:!?](?:\s|$)", general[:at])[-1]
    before = _last_words(sentence, 5)
    clause = re.split(r"[.,;:!?](?:\s|$)", general[at + len(name) + 2 :], maxsplit=1)[0]
    after = re.match(r"\S*(?:\s+\S+){0,3}", clause).group(0)
    text = " ".join((before + "{" + name + "}" + after).split())
    return text.rstrip(" $(").replace("\\", "/")
