"""Running generated programs in the sandbox and checking their answers.

Programs are executed by `tpu_train.evaluation.executor` (fork-per-program, seccomp/Landlock); only
answer strings come back. Answers are compared with the project grader's strict exact-rational policy.

Example:
    >>> with Executor(ExecutorConfig(timeout_s=5.0, workers=1)) as ex:  # doctest: +SKIP
    ...     outcome = run_programs(ex, ["def solution():\\n    return 6 * 7"])[0]
    >>> outcome.answer, outcome.reason  # doctest: +SKIP
    ('42', None)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tpu_train.data.textnums import canonical_answer
from tpu_train.evaluation.executor import Executor, ExecutorConfig
from tpu_train.evaluation.grader import numbers_equal

__all__ = ["Executor", "ExecutorConfig", "Outcome", "answers_match", "run_programs"]


@dataclass(frozen=True)
class Outcome:
    """What one program produced.

    Attributes:
        answer: canonical numeric answer (float noise removed), or None.
        reason: None when a numeric answer came back, else why not ("exec:runtime_error:ZeroDivisionError",
            "exec:timeout", "non_numeric_answer", ...).
        raw: the answer string as the executor returned it.
    """

    answer: str | None
    reason: str | None
    raw: str | None


def run_programs(executor: Executor, programs: Sequence[str]) -> list[Outcome]:
    """Execute programs (order preserved) and canonicalise their numeric answers."""
    outcomes = []
    for result in executor.run(list(programs)):
        if result.verdict != "ok":
            detail = f":{result.error_type}" if result.error_type else ""
            outcomes.append(Outcome(None, f"exec:{result.verdict}{detail}", result.answer))
            continue
        if result.answer is None:
            outcomes.append(Outcome(None, "no_answer", None))
            continue
        answer = canonical_answer(result.answer)
        reason = None if answer is not None else "non_numeric_answer"
        outcomes.append(Outcome(answer, reason, result.answer))
    return outcomes


def answers_match(prediction: str, gold: str) -> bool:
    """Strict numeric equality of a program answer and a gold answer (the grader's policy)."""
    return numbers_equal(prediction, gold)
