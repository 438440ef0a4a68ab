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

from tpu_train.cli import run_main
from tpu_train.evaluation import grader, isolation, numbers
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
    "min_isolation", ExecutorConfig.min_isolation, list(isolation.LEVELS),
    "Refuse to run below this isolation level (the default is the weakest that confines files).",
)  # fmt: skip
_MAX_ISOLATION = flags.DEFINE_enum(
    "max_isolation", ExecutorConfig.max_isolation, list(isolation.LEVELS),
    "Try no layer above this level (to see how programs fare on a weaker machine).",
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


_CHUNK = 64  # programs run, graded and written together


def _grade(rows: list[dict], results: list) -> dict[int, bool]:
    """{index in rows: strict verdict} for the rows that carry a gold."""
    with_gold = [i for i, row in enumerate(rows) if "gold" in row]
    verdicts = grader.grade_many(
        [
            grader.GradeRequest(
                results[i].answer,
                str(rows[i]["gold"]),
                answer_type_for(rows[i]),
                tuple(rows[i]["options"]) if rows[i].get("options") else None,
                dataset=rows[i].get("dataset"),
            )
            for i in with_gold
        ]
    )
    return dict(zip(with_gold, verdicts, strict=True))


def _output_row(row: dict, result) -> dict:
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
    return out


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
        max_isolation=_MAX_ISOLATION.value,
        allow_weaker=_ALLOW_WEAKER.value,
    )
    try:  # an unwritable --output fails now, before any program runs
        handle = open(_OUTPUT.value, "w", encoding="utf-8")  # noqa: SIM115 (closed below)
    except OSError as exc:
        raise app.UsageError(f"--output={_OUTPUT.value}: {exc.strerror}") from None
    start = time.monotonic()
    bar, update = _progress(len(rows))
    results, verdicts = [], []
    try:
        with handle, Executor(config) as executor:
            # Chunks, each graded and written (and flushed) as soon as it is done: a Ctrl-C or a crash
            # keeps every finished result.
            for first in range(0, len(rows), _CHUNK):
                chunk = rows[first : first + _CHUNK]
                done = executor.run([row["program"] for row in chunk], progress=update)
                correct = _grade(chunk, done)
                for i, (row, result) in enumerate(zip(chunk, done, strict=True)):
                    out = _output_row(row, result)
                    if i in correct:
                        out["correct"] = correct[i]
                    handle.write(json.dumps(out) + "\n")
                handle.flush()
                results += done
                verdicts += list(correct.values())
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()
        print(
            f"interrupted: {len(results)} of {len(rows)} results are in {_OUTPUT.value}",
            file=sys.stderr,
        )
        sys.exit(130)
    elapsed = time.monotonic() - start
    if bar is not None:
        bar.close()
    graded = [row for row in rows if "gold" in row]
    counts = collections.Counter(r.verdict for r in results)
    print(f"programs: {len(results)}  isolation: {results[0].isolation_level if results else '-'}")
    for verdict, count in counts.most_common():
        print(f"  {verdict:<14} {count}")
    if graded:
        print(f"accuracy (strict): {100.0 * sum(verdicts) / len(graded):.2f}% of {len(graded)}")
    print(f"throughput: {len(results) / max(elapsed, 1e-9):.1f} programs/s ({elapsed:.2f} s)")


def run() -> None:
    """What `python -m tpu_train.execute` does."""
    run_main(main, __doc__, required=("input", "output"))


if __name__ == "__main__":
    run()
