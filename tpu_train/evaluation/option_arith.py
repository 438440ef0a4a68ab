"""A tiny arithmetic evaluator for multiple-choice option texts such as ``5(√3 + 1)``.

Mapping a PoT program's computed value onto AQuA/SAT options needs the options' values, and
some options are expressions. This recursive-descent parser understands numbers, ``+ - * / ^``
(also ``× ÷ **``), ``√`` / ``sqrt``, ``π`` / ``pi``, parentheses and implicit multiplication.
It only ever computes with floats; nothing is handed to ``eval``.
"""

from __future__ import annotations

import math
import re

MAX_CHARS = 120
_TOKEN = re.compile(r"\s*(?:(\d+(?:\.\d*)?|\.\d+)|(\*\*|sqrt|pi|[-+*/^()×÷√π]))")


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens: list[str] = []
        pos = 0
        text = text.rstrip()
        while pos < len(text):
            match = _TOKEN.match(text, pos)
            if match is None:
                raise ValueError(f"unexpected {text[pos : pos + 10]!r}")
            self.tokens.append(match.group(1) or match.group(2))
            pos = match.end()
        self.pos = 0

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            raise ValueError("unexpected end")
        self.pos += 1
        return token

    def expression(self) -> float:
        value = self.term()
        while self.peek() in ("+", "-"):
            value = value + self.term() if self.take() == "+" else value - self.term()
        return value

    def term(self) -> float:
        value = self.unary()
        while True:
            token = self.peek()
            if token in ("*", "×", "/", "÷"):
                self.take()
                right = self.unary()
                value = value * right if token in ("*", "×") else value / right
            elif token is not None and (
                token[0].isdigit() or token in ("(", "√", "sqrt", "π", "pi")
            ):
                value *= self.unary()  # implicit multiplication: 5(√3 + 1), 2π
            else:
                return value

    def unary(self) -> float:
        if self.peek() in ("+", "-"):
            return -self.unary() if self.take() == "-" else self.unary()
        return self.power()

    def power(self) -> float:
        base = self.atom()
        if self.peek() in ("^", "**"):
            self.take()
            exponent = self.unary()
            if abs(exponent) > 1000 or abs(base) > 1e100:
                raise ValueError("power too large")
            return math.pow(base, exponent)
        return base

    def atom(self) -> float:
        token = self.take()
        if token == "(":
            value = self.expression()
            if self.take() != ")":
                raise ValueError("unbalanced parenthesis")
            return value
        if token in ("√", "sqrt"):
            return math.sqrt(self.power())
        if token in ("π", "pi"):
            return math.pi
        if token[0].isdigit() or token[0] == ".":
            return float(token)
        raise ValueError(f"unexpected {token!r}")


def evaluate(text: str) -> float | None:
    """Value of an arithmetic option text, or None when it is not plain arithmetic."""
    if not text or len(text) > MAX_CHARS:
        return None
    try:
        parser = _Parser(text.replace("–", "-").replace("−", "-"))
        value = parser.expression()
        if parser.peek() is not None:
            return None
    except (ValueError, ZeroDivisionError, OverflowError, RecursionError):
        return None
    return value if math.isfinite(value) else None
