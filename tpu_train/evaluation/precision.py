"""How precisely each benchmark's numeric golds are meant, for the strict grader.

Two policies (the mechanics are :func:`tpu_train.evaluation.numbers.values_match`):

* ``exact``: the gold is the exact answer. A prediction matches when it has the same value,
  allowing only floating-point noise when a float is involved (1e-9 relative for an
  integer-valued gold, which is double-precision noise and nothing more; 1e-6 for others).
* ``rounded``: a non-integer gold written with d decimals (or to some significant digit in
  scientific notation) is the true answer rounded there, so additionally an *unrounded*
  prediction (an exact fraction, or a decimal of at least ten significant digits: what a
  program prints for a float) that rounds to the gold matches. A prediction that is itself
  rounded must equal the gold: against gold ``0.4``, ``0.43`` is another answer, not a more
  precise one.

Under both, integer-valued golds are exact (SVAMP writes every gold as ``N.0``: ``51.0``
rejects ``50.96``), nothing is rescaled by 100 unless the caller asks, and NaN/inf never
match. Per benchmark:

* GSM8K, GSM8K+ (InfinityMATH's variants), SVAMP: every gold is an integer; ``exact``. GSM8K's
  own scorer compares the number after ``####`` as a string (openai/grade-school-math,
  ``grade_school_math/dataset.py``, ``is_correct``), which is exact too.
* DeepMind Mathematics: ``exact``. Its generator computes exact answers, decimals included
  (``-0.4``, ``0.042``); questions that ask for rounding have the rounded value as the
  answer, so a prediction left unrounded is wrong.
* NumGLUE, SimulEq: ``rounded``. Their decimal golds are roundings of computed answers
  (NumGLUE ``4.17`` and ``0.6666666667`` for 25/6 and 2/3, SimulEq ``583.3333``).
* TheoremQA: ``rounded``. Its golds are floats to varying precision. TheoremQA's own scorer is
  more lenient (wenhuchen/TheoremQA, ``predict_accuracy.py``: ``within_eps`` accepts a float
  gold within 4 % relative, ``compare_two_numbers`` rounds the prediction for an integer
  gold); that is what ``compat`` mode reproduces, and strict does not.
* MATH goes to math-verify (LaTeX); AQuA, SAT and MMLU are multiple choice, where a PoT value
  selects the one option it matches under ``rounded`` (options such as SAT's ``5.7`` are
  rounded values).

A dataset not listed (or none) gets ``rounded``.
"""

from __future__ import annotations

EXACT = "exact"
ROUNDED = "rounded"
POLICIES = {
    "gsm8k": EXACT,
    "gsm8k_plus": EXACT,
    "svamp": EXACT,
    "mathematics": EXACT,
    "numglue": ROUNDED,
    "simuleq": ROUNDED,
    "theoremqa": ROUNDED,
    "aqua": ROUNDED,
    "sat": ROUNDED,
    "mmlu_mathematics": ROUNDED,
    "math": ROUNDED,
}
DEFAULT = ROUNDED


def policy_for(dataset: str | None) -> str:
    """The precision policy of ``dataset`` (``rounded`` for an unknown one or None)."""
    return POLICIES.get(dataset or "", DEFAULT)


def rounds_golds(dataset: str | None) -> bool:
    """True when non-integer golds of ``dataset`` are roundings of the true answer."""
    return policy_for(dataset) == ROUNDED
