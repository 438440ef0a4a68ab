"""LaTeX / symbolic equivalence with ``math-verify``, always inside the sandbox.

``math-verify`` parses LaTeX with an ANTLR grammar but its plain-expression path goes through
sympy's ``parse_expr`` (which calls ``eval``), and symbolic simplification can run for minutes
on adversarial input. So the check runs as a registered worker function in a confined child
under a SIGKILL deadline; the evaluator only ever sees the string ``"true"`` or ``"false"``.
"""

from __future__ import annotations

import atexit
import re
import threading
from collections.abc import Sequence

MAX_LATEX_CHARS = 2000
DEFAULT_TIMEOUT_S = 5.0

_SPACES = re.compile(r"\s+|\\[,;:! ]|\\quad|\\qquad")


def _wrap(text: str) -> str:
    return text if ("$" in text or "\\boxed" in text or "\\(" in text) else f"${text}$"


def latex_equal(prediction: str, gold: str) -> str:
    """Worker-side check (runs in a sandboxed child): ``"true"`` when math-verify agrees."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    config = [LatexExtractionConfig(), ExprExtractionConfig()]
    gold_parsed = parse(_wrap(gold), extraction_config=config)
    pred_parsed = parse(_wrap(prediction), extraction_config=config)
    if not gold_parsed or not pred_parsed:
        return "false"
    return "true" if verify(gold_parsed, pred_parsed) else "false"


def warm_up() -> None:
    """Import math-verify and run it once in the worker so children start warm."""
    latex_equal("\\frac{1}{2}", "0.5")
    latex_equal("x=3", "\\{3\\}")


def normalise(text: str) -> str:
    """Cheap textual normal form used for the identical-answer fast path."""
    text = _SPACES.sub("", text)
    text = text.replace("\\left", "").replace("\\right", "").replace("\\dfrac", "\\frac")
    text = text.replace("\\tfrac", "\\frac").strip("$").rstrip(".")
    return text


class LatexChecker:
    """A small sandbox pool dedicated to symbolic checks (math-verify pre-imported)."""

    def __init__(
        self, workers: int = 1, timeout_s: float = DEFAULT_TIMEOUT_S, allow_weaker: bool = False
    ) -> None:
        """Start the pool; like the executor it refuses to run below ``landlock`` isolation
        unless ``allow_weaker`` (math-verify's expression parser calls ``eval``)."""
        from tpu_train.evaluation.executor import Executor, ExecutorConfig

        self.timeout_s = timeout_s
        self._executor = Executor(
            ExecutorConfig(
                workers=workers,
                timeout_s=timeout_s,
                preload_math_verify=True,
                memory_bytes=3 << 30,
                allow_weaker=allow_weaker,
            )
        )

    def equal_many(self, pairs: Sequence[tuple[str, str]]) -> list[bool]:
        """Check (prediction, gold) pairs; oversized or failed checks count as not equal."""
        results = [False] * len(pairs)
        todo = []
        for index, (prediction, gold) in enumerate(pairs):
            if len(prediction) <= MAX_LATEX_CHARS and len(gold) <= MAX_LATEX_CHARS:
                todo.append(index)
        outcomes = self._executor.call("latex_equal", [pairs[i] for i in todo], self.timeout_s)
        for index, outcome in zip(todo, outcomes, strict=True):
            results[index] = outcome.verdict == "ok" and outcome.answer == "true"
        return results

    def close(self) -> None:
        self._executor.close()


_default: LatexChecker | None = None
_default_lock = threading.Lock()


def default_checker() -> LatexChecker:
    """Process-wide checker, started on first use and stopped at interpreter exit."""
    global _default
    with _default_lock:
        if _default is None:
            _default = LatexChecker()
            atexit.register(_default.close)
        return _default
