"""Run programs in the sandbox: ``python -m tpu_train.execute --input=in.jsonl --output=out.jsonl``.

Input lines are ``{"id", "program"}`` with optional ``"gold"``, ``"dataset"``, ``"options"``
(and ``"answer_type"``). Output lines add the verdict, capped stdout, the answer and the channel
that produced it, ``correct`` (strict mode, when a gold is given), isolation level and seconds.
A summary follows: counts per verdict, accuracy when golds were given, programs per second.
"""

from __future__ import annotations

import collections
import json
import sys
import time

from absl import app, flags

from tpu_train.evaluation import grader, numbers
from tpu_train.evaluation.executor import Executor, ExecutorConfig
from tpu_train.evaluation.pipeline import InputError, read_jsonl

_INPUT = flags.DEFINE_string(
    "input", None, "JSONL file of {id, program[, gold, dataset, options]}."
)
_OUTPUT = flags.DEFINE_string("output", None, "JSONL file to write results to.")
_WORKERS = flags.DEFINE_integer("workers", 2, "Warm sandbox workers.")
_TIMEOUT = flags.DEFINE_float("timeout", 5.0, "Wall-clock seconds per program.")
_MEMORY_MB = flags.DEFINE_integer("memory_mb", 2048, "Address-space limit per program (MiB).")
_OUTPUT_KB = flags.DEFINE_integer("output_kb", 64, "Stdout kept per program (KiB).")
_MIN_ISOLATION = flags.DEFINE_enum(
    "min_isolation", "seccomp", ["process", "seccomp", "landlock", "namespaced"],
    "Refuse to run below this isolation level.",
)  # fmt: skip
_ALLOW_WEAKER = flags.DEFINE_bool("allow_weaker", False, "Run even below --min_isolation.")

DATASET_TYPES = {
    "gsm8k": "number", "svamp": "number", "simuleq": "number", "numglue": "number",
    "math": "latex", "mathematics": "expression", "theoremqa": "number",
    "aqua": "choice", "sat": "choice", "mmlu_mathematics": "choice",
}  # fmt: skip


def answer_type_for(row: dict) -> str:
    """Explicit ``answer_type``, else the dataset's, else a guess from the gold's shape."""
    if isinstance(row.get("answer_type"), str):
        return row["answer_type"]
    if row.get("dataset") in DATASET_TYPES:
        return DATASET_TYPES[row["dataset"]]
    if row.get("options"):
        return "choice"
    return "number" if numbers.parse_number(str(row["gold"])) is not None else "expression"


def _progress(total: int):
    if not sys.stderr.isatty():
        return None, None
    from tqdm import tqdm

    bar = tqdm(total=total, unit="prog", file=sys.stderr)
    return bar, bar.update


def main(argv: list[str]) -> None:
    del argv
    try:
        rows = [row for _, row in read_jsonl(_INPUT.value, {"id": str, "program": str})]
    except InputError as exc:
        raise app.UsageError(str(exc)) from None
    config = ExecutorConfig(
        timeout_s=_TIMEOUT.value,
        memory_bytes=_MEMORY_MB.value << 20,
        output_bytes=_OUTPUT_KB.value << 10,
        workers=_WORKERS.value,
        min_isolation=_MIN_ISOLATION.value,
        allow_weaker=_ALLOW_WEAKER.value,
    )
    start = time.monotonic()
    bar, update = _progress(len(rows))
    with Executor(config) as executor:
        results = executor.run([row["program"] for row in rows], progress=update)
    elapsed = time.monotonic() - start
    if bar is not None:
        bar.close()
    graded = [row for row in rows if "gold" in row]
    verdicts = grader.grade_many(
        [
            grader.GradeRequest(
                result.answer,
                str(row["gold"]),
                answer_type_for(row),
                tuple(row["options"]) if row.get("options") else None,
                dataset=row.get("dataset"),
            )
            for row, result in zip(rows, results, strict=True)
            if "gold" in row
        ]
    )
    correct = iter(verdicts)
    with open(_OUTPUT.value, "w", encoding="utf-8") as handle:
        for row, result in zip(rows, results, strict=True):
            out = {k: v for k, v in row.items() if k != "program"}
            out |= {
                "verdict": result.verdict,
                "error_type": result.error_type,
                "stdout": result.stdout,
                "answer": result.answer,
                "answer_source": result.answer_source,
                "isolation_level": result.isolation_level,
                "seconds": round(result.seconds, 6),
            }
            if "gold" in row:
                out["correct"] = next(correct)
            handle.write(json.dumps(out) + "\n")
    counts = collections.Counter(r.verdict for r in results)
    print(f"programs: {len(results)}  isolation: {results[0].isolation_level if results else '-'}")
    for verdict, count in counts.most_common():
        print(f"  {verdict:<14} {count}")
    if graded:
        print(f"accuracy (strict): {100.0 * sum(verdicts) / len(graded):.2f}% of {len(graded)}")
    print(f"throughput: {len(results) / max(elapsed, 1e-9):.1f} programs/s ({elapsed:.2f} s)")


if __name__ == "__main__":
    flags.mark_flags_as_required(["input", "output"])
    app.run(main)
