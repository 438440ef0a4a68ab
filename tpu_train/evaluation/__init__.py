"""Evaluation: sandboxed execution of model-written programs, answer grading, benchmark scoring.

* :mod:`~tpu_train.evaluation.executor`: :class:`Executor`, warm workers forking one confined
  child per program (rlimits, seccomp, Landlock, namespaces, probed at start-up);
* :mod:`~tpu_train.evaluation.grader`: ``strict`` and MAmmoTH-``compat`` answer grading;
* :mod:`~tpu_train.evaluation.benchmarks`: loaders for the ten sets in ``eval/``;
* :mod:`~tpu_train.evaluation.scoring` / :mod:`~tpu_train.evaluation.pipeline`: oracle check,
  tables, charts, and the engine of ``python -m tpu_train.evaluate``.
"""
