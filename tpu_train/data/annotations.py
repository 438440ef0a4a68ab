"""Exact parsing of GSM8K calculator annotations such as `<<48/2=24>>`.

An annotation expression is split into tokens: number literals (kept with their exact value) and
operator text. The arithmetic is evaluated exactly with `fractions.Fraction` over a whitelisted AST,
so no model-written or data-written text is ever passed to `eval`.

Example:
    >>> ann = parse_annotation("100-50-30-15=5")
    >>> [t.value for t in ann.tokens if isinstance(t, Literal)], ann.value, ann.stated
    ([Fraction(100, 1), Fraction(50, 1), Fraction(30, 1), Fraction(15, 1)], Fraction(5, 1), Fraction(5, 1))
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from fractions import Fraction

_TOKEN_RE = re.compile(r"\d+\.?\d*|\.\d+|\*\*|[-+*/%()]|\s+")
_MAX_EXPONENT = 64


class AnnotationError(ValueError):
    """An annotation that is not plain, evaluable arithmetic."""


@dataclass(frozen=True)
class Literal:
    """A number literal in an annotation expression."""

    text: str
    value: Fraction


@dataclass(frozen=True)
class Annotation:
    """A parsed `<<expression=result>>` annotation.

    Attributes:
        tokens: the expression as literals and operator strings (whitespace dropped).
        value: the exact value of the expression.
        stated: the result written after "=".
        stated_text: that result as written.
    """

    tokens: tuple[Literal | str, ...]
    value: Fraction
    stated: Fraction
    stated_text: str


def tokenize(expr: str) -> tuple[Literal | str, ...]:
    """Split an expression into literals and operators; raises on any other character."""
    tokens: list[Literal | str] = []
    pos = 0
    while pos < len(expr):
        match = _TOKEN_RE.match(expr, pos)
        if not match:
            raise AnnotationError(f"unexpected character {expr[pos]!r} in {expr!r}")
        text = match.group(0)
        pos = match.end()
        if text.isspace():
            continue
        if text[0].isdigit() or text[0] == ".":
            tokens.append(Literal(text, Fraction(text.rstrip(".") or "0")))
        else:
            tokens.append(text)
    if not tokens:
        raise AnnotationError("empty expression")
    return tokens


def _eval_node(node: ast.AST, values: dict[str, Fraction]) -> Fraction:
    if isinstance(node, ast.Expression):
        return _eval_node(node.body, values)
    if isinstance(node, ast.Name) and node.id in values:
        return values[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        inner = _eval_node(node.operand, values)
        return -inner if isinstance(node.op, ast.USub) else inner
    if isinstance(node, ast.BinOp):
        left, right = _eval_node(node.left, values), _eval_node(node.right, values)
        op = node.op
        if isinstance(op, ast.Add):
            return left + right
        if isinstance(op, ast.Sub):
            return left - right
        if isinstance(op, ast.Mult):
            return left * right
        if isinstance(op, ast.Div | ast.Mod):
            if right == 0:
                raise AnnotationError("division by zero")
            return left / right if isinstance(op, ast.Div) else left % right
        if isinstance(op, ast.Pow):
            if right.denominator != 1 or abs(right) > _MAX_EXPONENT:
                raise AnnotationError("unsupported exponent")
            return left**right.numerator
    raise AnnotationError(f"unsupported syntax {type(node).__name__}")


def evaluate(tokens: tuple[Literal | str, ...]) -> Fraction:
    """Exact value of a token sequence.

    Example:
        >>> evaluate(tokenize("(3+1)*.5"))
        Fraction(2, 1)
    """
    names: dict[str, Fraction] = {}
    parts = []
    for token in tokens:
        if isinstance(token, Literal):
            name = f"_n{len(names)}"
            names[name] = token.value
            parts.append(name)
        else:
            parts.append(token)
    try:
        tree = ast.parse(" ".join(parts), mode="eval")
    except SyntaxError as err:
        raise AnnotationError(f"not an arithmetic expression: {' '.join(parts)!r}") from err
    return _eval_node(tree, names)


def parse_annotation(body: str) -> Annotation:
    """Parse the text between `<<` and `>>` (see the module example)."""
    if "=" not in body:
        raise AnnotationError(f"annotation without '=': {body!r}")
    expr, stated_text = body.rsplit("=", 1)
    stated_text = stated_text.strip()
    try:
        stated = Fraction(stated_text.replace(",", ""))
    except ValueError as err:
        raise AnnotationError(f"annotation result is not a number: {stated_text!r}") from err
    tokens = tokenize(expr)
    return Annotation(tuple(tokens), evaluate(tuple(tokens)), stated, stated_text)
