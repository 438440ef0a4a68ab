"""Repopulate InfinityMATH-format records with new numbers, verified by sandboxed execution.

Usage:
    python -m tpu_train.data.repopulate --input=data/programs/gsm8k_train_programs.jsonl.gz \\
        --variants=3 --seed=0 --output=data/programs/gsm8k_train_variants.jsonl.gz

For each record, new values are drawn for a non-empty subset of its variables (within each
variable's range and grid), substituted into problem and program, and the program is re-executed in
the sandbox. A variant is kept only if its answer is well formed: numeric and finite, an integer where
the original answer was, of the same sign, within three orders of magnitude of the original and with
no more decimal places than max(2, original's). The per-record random stream depends only on
(seed, record id), so output is deterministic and independent of chunking and of other records.

Example (library use):
    >>> with Executor(ExecutorConfig(timeout_s=5.0, workers=1)) as ex:  # doctest: +SKIP
    ...     variants, stats = repopulate(records, ex, variants=2, seed=0)
"""

from __future__ import annotations

import argparse
import collections
import random
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from tqdm import tqdm

from tpu_train import jsonl
from tpu_train.data.records import (
    FieldMap,
    ProgramRecord,
    RecordError,
    atomic_output,
)
from tpu_train.data.substitute import SubstitutionError, check_substitutable, substitute
from tpu_train.data.textnums import canonical_answer, decimal_places
from tpu_train.data.variables import complete_spec, draw_value
from tpu_train.data.verify import Executor, ExecutorConfig, run_programs

_CHUNK_RECORDS = 128


@dataclass
class RepopulationStats:
    """Counts of one repopulation run (mutable: filled while streaming)."""

    records: int = 0
    records_with_variants: int = 0
    candidates: int = 0
    variants: int = 0
    seconds: float = 0.0
    skipped_records: collections.Counter = field(default_factory=collections.Counter)
    rejected_candidates: collections.Counter = field(default_factory=collections.Counter)

    @property
    def variants_per_second(self) -> float:
        return self.variants / self.seconds if self.seconds else 0.0


@dataclass(frozen=True)
class Candidate:
    """A drawn assignment of new values, before execution."""

    record: ProgramRecord
    values: dict[str, int | float]
    problem: str
    program: str


def reference_answer(record: ProgramRecord) -> str | None:
    """The record's own answer: `gen_answer` when numeric, else `ori_answer` when numeric."""
    return canonical_answer(record.gen_answer) or canonical_answer(str(record.ori_answer))


def well_formed(answer: str, original: str) -> str | None:
    """None if a variant's answer is acceptable next to the original answer, else the reason.

    Example:
        >>> well_formed("12", "10"), well_formed("12.5", "10"), well_formed("-3", "10")
        (None, 'not_integer', 'sign_changed')
    """
    new, old = Fraction(answer), Fraction(original)
    if old.denominator == 1 and new.denominator != 1:
        return "not_integer"
    if (old > 0 and new <= 0) or (old >= 0 and new < 0) or (old < 0 and new >= 0):
        return "sign_changed"
    if old != 0 and not abs(old) / 1000 <= abs(new) <= abs(old) * 1000:
        return "magnitude"
    if decimal_places(answer) > max(2, decimal_places(original)):
        return "too_many_decimals"
    return None


def draw_candidates(record: ProgramRecord, count: int, seed: int) -> list[Candidate]:
    """Up to `count` distinct value assignments, each changing a non-empty subset of variables."""
    rng = random.Random(f"{seed}:{record.id}")
    specs = {name: complete_spec(spec) for name, spec in record.variables.items()}
    names = sorted(specs)
    subsets = list(range(1, 2 ** len(names))) if len(names) <= 10 else []
    rng.shuffle(subsets)
    seen = {tuple(specs[n]["value"] for n in names)}
    candidates: list[Candidate] = []
    for attempt in range(count * 3):
        mask = subsets[attempt % len(subsets)] if subsets else rng.randrange(1, 2 ** len(names))
        values = {n: draw_value(specs[n], rng) for bit, n in enumerate(names) if mask >> bit & 1}
        key = tuple(values.get(n, specs[n]["value"]) for n in names)
        if key in seen:
            continue
        seen.add(key)
        problem, program = substitute(record, values)
        candidates.append(Candidate(record, values, problem, program))
        if len(candidates) == count:
            break
    return candidates


def _variant(candidate: Candidate, index: int, answer: str) -> ProgramRecord:
    record = candidate.record
    variables: dict[str, dict[str, Any]] = {
        name: {**spec, "value": candidate.values.get(name, spec["value"])}
        for name, spec in record.variables.items()
    }
    value = Fraction(answer)
    return ProgramRecord(
        id=f"{record.id}/v{index}",
        source=record.source,
        original_problem=candidate.problem,
        general_problem=record.general_problem,
        generated_program=candidate.program,
        variables=variables,
        ori_answer=int(value) if value.denominator == 1 else float(value),
        gen_answer=answer,
    )


def _repopulate_chunk(
    records: Sequence[ProgramRecord],
    executor: Executor,
    variants: int,
    seed: int,
    stats: RepopulationStats,
    tries: int,
) -> list[ProgramRecord]:
    pending: list[tuple[ProgramRecord, str, list[Candidate]]] = []
    for record in records:
        stats.records += 1
        original = reference_answer(record)
        try:
            check_substitutable(record)
            if original is None:
                raise SubstitutionError("non_numeric_answer", record.id)
        except SubstitutionError as err:
            stats.skipped_records[err.reason] += 1
            continue
        pending.append((record, original, draw_candidates(record, variants * tries, seed)))
    programs = [c.program for _, _, cands in pending for c in cands]
    outcomes = iter(run_programs(executor, programs))
    out: list[ProgramRecord] = []
    for _record, original, cands in pending:
        kept = 0
        for candidate in cands:
            outcome = next(outcomes)
            stats.candidates += 1
            reason = outcome.reason or (
                well_formed(outcome.answer, original) if outcome.answer else "no_answer"
            )
            if reason is None and kept < variants:
                kept += 1
                out.append(_variant(candidate, kept, outcome.answer))
            elif reason is not None:
                stats.rejected_candidates[reason] += 1
        stats.variants += kept
        stats.records_with_variants += kept > 0
    return out


def repopulate(
    records: Iterable[ProgramRecord],
    executor: Executor,
    variants: int,
    seed: int,
    progress_total: int | None = None,
    tries: int = 2,
) -> tuple[Iterator[ProgramRecord], RepopulationStats]:
    """Stream variants of `records` (up to `variants` per record) and the stats being filled.

    Up to `variants * tries` candidates are executed per record; the first `variants` that pass
    the checks are kept. The stats are complete once the returned iterator is exhausted.
    """
    stats = RepopulationStats()

    def generate() -> Iterator[ProgramRecord]:
        start = time.perf_counter()
        bar = tqdm(
            total=progress_total, desc="repopulate", unit="rec", disable=progress_total is None
        )
        chunk: list[ProgramRecord] = []
        for record in records:
            chunk.append(record)
            if len(chunk) == _CHUNK_RECORDS:
                yield from _repopulate_chunk(chunk, executor, variants, seed, stats, tries)
                bar.update(len(chunk))
                bar.set_postfix(variants=stats.variants)
                chunk = []
        if chunk:
            yield from _repopulate_chunk(chunk, executor, variants, seed, stats, tries)
            bar.update(len(chunk))
        bar.close()
        stats.seconds = time.perf_counter() - start

    return generate(), stats


def _read(
    path: str, fields: FieldMap, skip_bad: bool, skipped: list[str]
) -> Iterator[ProgramRecord]:
    for where, line in jsonl.lines(path):
        try:
            yield ProgramRecord.from_json(line, where, fields)
        except RecordError as err:
            if not skip_bad:
                raise
            skipped.append(str(err))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True, help="InfinityMATH-format JSONL (.gz accepted)")
    parser.add_argument("--output", required=True, help="JSONL of variants to write (.gz accepted)")
    parser.add_argument("--variants", type=int, default=3, help="variants per record (K)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tries", type=int, default=2, help="candidates executed per variant")
    parser.add_argument("--field_map", default="", help="e.g. original_problem=problem_text")
    parser.add_argument("--skip_bad_lines", action="store_true", help="skip unreadable lines")
    parser.add_argument("--keep_original", action="store_true", help="also write input records")
    parser.add_argument("--workers", type=int, default=2, help="sandbox worker processes")
    parser.add_argument("--timeout_s", type=float, default=5.0, help="per-program time limit")
    args = parser.parse_args(argv)
    if Path(args.input).resolve() == Path(args.output).resolve():
        parser.error(
            f"--output {args.output} is the --input file; write the variants to another file"
        )
    with jsonl.open_text(args.input) as handle:
        total = sum(1 for line in handle if line.strip())
    skipped: list[str] = []
    records = _read(args.input, FieldMap.parse(args.field_map), args.skip_bad_lines, skipped)
    config = ExecutorConfig(timeout_s=args.timeout_s, workers=args.workers)
    with atomic_output(args.output, inputs=[args.input]) as out, Executor(config) as executor:
        if args.keep_original:
            for record in _read(args.input, FieldMap.parse(args.field_map), True, []):
                out.write(record.to_json() + "\n")
        stream, stats = repopulate(records, executor, args.variants, args.seed, total, args.tries)
        for variant in stream:
            out.write(variant.to_json() + "\n")
    print(
        f"{stats.variants} variants from {stats.records} records "
        f"({stats.records_with_variants} with at least one) in {stats.seconds:.1f}s: "
        f"{stats.variants_per_second:.1f} variants/s -> {args.output}",
        file=sys.stderr,
    )
    for reason, count in stats.skipped_records.most_common():
        print(f"  record skipped   {count:6d}  {reason}", file=sys.stderr)
    for reason, count in stats.rejected_candidates.most_common():
        print(f"  variant rejected {count:6d}  {reason}", file=sys.stderr)
    if skipped:
        print(f"  {len(skipped)} unreadable lines skipped, first: {skipped[0]}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
