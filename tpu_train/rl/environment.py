"""RL environments: an endless stream of problems with answers that can be checked, and their rewards.

`ProgramEnvironment` is InfinityMATH's idea used as an environment: every verified number-independent
program (an InfinityMATH-format record) generates new problems. Each step draws records, gives a
non-empty subset of each one's variables new values within their ranges (`data.repopulate`), and runs
the record's own program in the sandbox for the new answer; a draw whose answer is not well formed is
replaced by the next one. The stream is a pure function of (seed, step), so a resumed run sees the same
problems, and problems equal to a held-out variant are never drawn. Completions are rewarded by running
the program the model wrote in the sandbox (full isolation) and grading its answer strictly:
reward 1 for a correct answer, plus `format_bonus` for a program that ran and returned a number.

`SumEnvironment` is the CI fixture: prompts of token ids [BOS, a, b], reward 1 when the first token
generated is the digit token of a + b. A tiny model learns it in seconds.

    env = ProgramEnvironment(records, executor, seed=0, prompt_format=fmt, exclude_problems=heldout)
    problems = env.problems(step=3, count=4)          # the same four problems for step 3, always
    scored = env.score(problems, completions)         # rewards [N] and a verdict per completion
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Collection, Sequence

import numpy as np

from tpu_train.data.prompts import POT_TRIGGER, PromptFormat
from tpu_train.data.records import ProgramRecord
from tpu_train.data.repopulate import draw_candidates, reference_answer, well_formed
from tpu_train.data.verify import Executor, run_programs
from tpu_train.embedded.evaluation import HELDOUT
from tpu_train.evaluation import extract, grader
from tpu_train.sampling.sampling_params import Completion

CORRECT, WRONG, NO_ANSWER = "correct", "wrong", "no_answer"


@dataclasses.dataclass(frozen=True)
class Problem:
    id: str  # "<record id>/rl<step>.<k>"
    prompt: str | tuple[int, ...]  # what the sampler is given (text in the model's format, or ids)
    answer: str


@dataclasses.dataclass(frozen=True)
class Scored:
    rewards: np.ndarray  # [N] float32
    verdicts: tuple[
        str, ...
    ]  # CORRECT, WRONG, NO_ANSWER or the executor's verdict ("timeout", ...)


class ProgramEnvironment:
    """Problems repopulated from program records; rewards from the sandbox and the strict grader."""

    def __init__(
        self,
        records: Sequence[ProgramRecord],
        executor: Executor,
        *,
        seed: int,
        prompt_format: PromptFormat,
        exclude_problems: Collection[str] = (),
        format_bonus: float = 0.0,
        draws: int = 4,
    ):
        self.records = [r for r in records if reference_answer(r) is not None]
        if not self.records:
            raise ValueError("no program record with a numeric answer to draw problems from")
        self.executor, self.seed, self.format = executor, seed, prompt_format
        self.exclude = set(exclude_problems)
        self.format_bonus, self.draws = format_bonus, draws

    def problems(self, step: int, count: int) -> list[Problem]:
        """`count` problems for `step`: the same for the same (seed, step), whatever ran before."""
        rng = random.Random(f"rl:{self.seed}:{step}")
        picks = [rng.choice(self.records) for _ in range(count)]
        drawn = [
            [
                c
                for c in draw_candidates(record, self.draws, seed=rng.randrange(1 << 30))
                if c.problem not in self.exclude
            ]
            for record in picks
        ]
        outcomes = iter(run_programs(self.executor, [c.program for cands in drawn for c in cands]))
        problems = []
        for k, (record, cands) in enumerate(zip(picks, drawn, strict=True)):
            original = reference_answer(record)
            chosen = None
            for candidate in cands:
                outcome = next(outcomes)
                if chosen is None and outcome.answer and not well_formed(outcome.answer, original):
                    chosen = (candidate.problem, outcome.answer)
            if chosen is None:  # no fresh numbers worked: the record's own problem
                chosen = (record.original_problem, original)
            question, answer = chosen
            problems.append(
                Problem(
                    f"{record.id}/rl{step}.{k}", self.format.render(question + POT_TRIGGER), answer
                )
            )
        return problems

    def score(self, problems: Sequence[Problem], completions: Sequence[Completion]) -> Scored:
        """Runs each completion's program in the sandbox and grades its answer against the problem's."""
        programs = [extract.pot_program(c.text or "") for c in completions]
        results = self.executor.run(programs)
        verdicts, rewards = [], []
        for problem, result in zip(problems, results, strict=True):
            if result.verdict != "ok":
                verdicts.append(result.verdict)
                rewards.append(0.0)
            elif result.answer is None:
                verdicts.append(NO_ANSWER)
                rewards.append(0.0)
            else:
                # graded as the held-out evaluation grades its variants
                right = grader.grade(result.answer, problem.answer, "number", dataset=HELDOUT)
                verdicts.append(CORRECT if right else WRONG)
                rewards.append(float(right) + self.format_bonus)
        return Scored(np.asarray(rewards, np.float32), tuple(verdicts))


class SumEnvironment:
    """Token-level fixture: prompt [bos, digit(a), digit(b)], answer digit(a + b), a and b in 0..`top`.

    Digit d is token `first_digit + d`. The reward is computed on the host from the first generated
    token, so a tiny model from scratch can learn it without a tokenizer or a sandbox."""

    def __init__(self, *, seed: int, bos_id: int = 1, first_digit: int = 3, top: int = 4):
        self.seed, self.bos, self.first_digit, self.top = seed, bos_id, first_digit, top

    def all_problems(self) -> list[Problem]:
        return [
            self._problem(f"sum/{a}+{b}", a, b)
            for a in range(self.top + 1)
            for b in range(self.top + 1)
        ]

    def problems(self, step: int, count: int) -> list[Problem]:
        rng = random.Random(f"sum:{self.seed}:{step}")
        pairs = [(rng.randint(0, self.top), rng.randint(0, self.top)) for _ in range(count)]
        return [self._problem(f"sum/{a}+{b}/rl{step}.{k}", a, b) for k, (a, b) in enumerate(pairs)]

    def _problem(self, name: str, a: int, b: int) -> Problem:
        digit = self.first_digit
        return Problem(name, (self.bos, digit + a, digit + b), str(digit + a + b))

    def score(self, problems: Sequence[Problem], completions: Sequence[Completion]) -> Scored:
        verdicts = tuple(
            CORRECT if c.tokens and str(c.tokens[0]) == p.answer else WRONG
            for p, c in zip(problems, completions, strict=True)
        )
        return Scored(np.asarray([v == CORRECT for v in verdicts], np.float32), verdicts)
