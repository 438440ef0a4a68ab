"""GSM8K -> InfinityMATH-format program records, verified by sandboxed execution.

Usage:
    python -m tpu_train.data.gsm8k_to_programs --input=data/gsm8k/gsm8k_train.jsonl \\
        --output=data/programs/gsm8k_train_programs.jsonl

Writes the kept records to `--output` and every rejected problem, with its reason, to
`<output stem>.rejected.jsonl`; prints the yield and a count per rejection reason.

Example (library use):
    >>> items = [GsmItem("gsm8k/train/0", "Ann has 4 pens and buys 3 more. How many pens?",
    ...     "4+3=<<4+3=7>>7\\n#### 7")]
    >>> with Executor(ExecutorConfig(timeout_s=5.0, workers=1)) as ex:  # doctest: +SKIP
    ...     report = convert(items, ex)
    >>> report.records[0].gen_answer  # doctest: +SKIP
    '7'
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from tqdm import tqdm

from tpu_train import jsonl
from tpu_train.data.gsm8k_programs import ConversionError, Draft, synthesize
from tpu_train.data.records import ProgramRecord, RecordError, write_jsonl
from tpu_train.data.verify import Executor, ExecutorConfig, answers_match, run_programs

_CHUNK = 512


@dataclass(frozen=True)
class GsmItem:
    """One GSM8K problem."""

    id: str
    question: str
    answer: str


@dataclass(frozen=True)
class Rejection:
    """A problem that produced no verified program."""

    id: str
    reason: str
    detail: str


@dataclass(frozen=True)
class ConversionReport:
    """Kept records, rejections and timing of one conversion run."""

    records: list[ProgramRecord]
    rejections: list[Rejection]
    seconds: float

    @property
    def yield_fraction(self) -> float:
        total = len(self.records) + len(self.rejections)
        return len(self.records) / total if total else 0.0

    def reason_counts(self) -> dict[str, int]:
        return dict(collections.Counter(r.reason for r in self.rejections).most_common())


def read_gsm8k(path: str | Path, split: str = "train") -> list[GsmItem]:
    """Read GSM8K JSONL (`question`, `answer`); ids are `gsm8k/<split>/<0-based line index>`.

    Raises:
        RecordError: naming file, line and field for a line that is not a GSM8K record.
    """
    items = []
    for index, (where, row) in enumerate(jsonl.objects(path, RecordError)):
        for field in ("question", "answer"):
            if not isinstance(row.get(field), str):
                raise RecordError(f"{where}: field {field!r} missing or not a string")
        items.append(GsmItem(f"gsm8k/{split}/{index}", row["question"], row["answer"]))
    return items


def _gold_json(gold: Fraction) -> int | str:
    return int(gold) if gold.denominator == 1 else str(float(gold))


def _to_record(draft: Draft, answer: str) -> ProgramRecord:
    return ProgramRecord(
        id=draft.id,
        source="gsm8k",
        original_problem=draft.original_problem,
        general_problem=draft.general_problem,
        generated_program=draft.program,
        variables=draft.variables,
        ori_answer=_gold_json(draft.answer),
        gen_answer=answer,
    )


def convert(
    items: Sequence[GsmItem], executor: Executor, progress: bool = False
) -> ConversionReport:
    """Synthesize, execute and check every item; keeps a program only if it reproduces the gold."""
    start = time.perf_counter()
    records: list[ProgramRecord] = []
    rejections: list[Rejection] = []
    bar = tqdm(total=len(items), desc="gsm8k->programs", unit="problem", disable=not progress)
    for offset in range(0, len(items), _CHUNK):
        drafts: list[Draft] = []
        for item in items[offset : offset + _CHUNK]:
            try:
                drafts.append(synthesize(item.id, item.question, item.answer))
            except ConversionError as err:
                rejections.append(Rejection(item.id, err.reason, err.detail))
        outcomes = run_programs(executor, [d.program for d in drafts])
        for draft, outcome in zip(drafts, outcomes, strict=True):
            gold = _gold_json(draft.answer)
            if outcome.answer is None:
                rejections.append(Rejection(draft.id, outcome.reason or "no_answer", draft.program))
            elif not answers_match(outcome.answer, str(gold)):
                detail = f"program gives {outcome.answer}, gold is {gold}"
                rejections.append(Rejection(draft.id, "execution_mismatch", detail))
            else:
                records.append(_to_record(draft, outcome.answer))
        bar.update(min(_CHUNK, len(items) - offset))
    bar.close()
    order = {item.id: i for i, item in enumerate(items)}
    rejections.sort(key=lambda r: order[r.id])
    return ConversionReport(records, rejections, time.perf_counter() - start)


def rejected_path(output: str | Path) -> Path:
    """Where the rejection list of `output` is written."""
    output = Path(output)
    stem = output.name.removesuffix(".gz").removesuffix(".jsonl")
    return output.with_name(stem + ".rejected.jsonl")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True, help="GSM8K JSONL (question, answer)")
    parser.add_argument("--output", required=True, help="InfinityMATH-format JSONL to write")
    parser.add_argument("--split", default="train", help="split name used in record ids")
    parser.add_argument("--limit", type=int, default=0, help="convert only the first N problems")
    parser.add_argument("--workers", type=int, default=2, help="sandbox worker processes")
    parser.add_argument("--timeout_s", type=float, default=5.0, help="per-program time limit")
    args = parser.parse_args(argv)
    items = read_gsm8k(args.input, args.split)
    if args.limit:
        items = items[: args.limit]
    with Executor(ExecutorConfig(timeout_s=args.timeout_s, workers=args.workers)) as executor:
        report = convert(items, executor, progress=True)
    write_jsonl(args.output, report.records)
    with open(rejected_path(args.output), "w", encoding="utf-8") as handle:
        for rejection in report.rejections:
            handle.write(json.dumps(rejection.__dict__, ensure_ascii=False) + "\n")
    print(
        f"kept {len(report.records)}/{len(items)} ({100 * report.yield_fraction:.1f}%) "
        f"in {report.seconds:.1f}s -> {args.output}",
        file=sys.stderr,
    )
    for reason, count in report.reason_counts().items():
        print(f"  rejected {count:5d}  {reason}", file=sys.stderr)
    print(f"rejections listed in {rejected_path(args.output)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
