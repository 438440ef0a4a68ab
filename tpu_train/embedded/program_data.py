"""Step 1 of the embedded default: GSM8K problems -> verified programs -> number variants.

A deterministic slice of the shipped GSM8K train set is converted to InfinityMATH-format programs (each
checked in the sandbox against the gold), and every kept program is repopulated with new numbers. The
variants of each problem are split: the last `heldout_per_problem` are *held out* (same problem, numbers
the model never saw), the others join the training data with the original. A problem whose program (as
the model writes it) is longer than `max_program_tokens` is left out: a program cut off at the target
length can be neither learned nor run. Seeing one program with many sets of numbers is what pushes a model
to copy numbers from the question rather than recall them (though 200 variants per problem did worse
than 40; see README); accuracy on the held-out ones is InfinityMATH's robustness claim,
measured live.

    data/train_programs.jsonl     originals + training variants (InfinityMATH layout)
    data/heldout_variants.jsonl   held-out variants (InfinityMATH layout; gen_answer is the gold)
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

from tpu_train.data.gsm8k_to_programs import convert as convert_gsm8k
from tpu_train.data.gsm8k_to_programs import read_gsm8k
from tpu_train.data.records import ProgramRecord, write_jsonl
from tpu_train.data.repopulate import repopulate
from tpu_train.data.sources import SHIPPED_DIR
from tpu_train.data.substitute import render_program
from tpu_train.evaluation.executor import Executor, ExecutorConfig
from tpu_train.sampling.tokenizer import Tokenizer

TRAIN_FILE = "train_programs.jsonl"
HELDOUT_FILE = "heldout_variants.jsonl"


@dataclasses.dataclass(frozen=True)
class ProgramData:
    directory: Path
    problems: int  # GSM8K problems read
    kept: int  # with a verified program that fits max_program_tokens
    train_records: int  # originals + training variants
    heldout: list[ProgramRecord]  # held-out variants, one problem may have several


def build(
    out_dir: Path,
    *,
    num_problems: int,
    variants: int,
    heldout_per_problem: int,
    seed: int,
    max_program_tokens: int,
    tokenizer: Tokenizer,
    gsm8k_train: Path = SHIPPED_DIR / "gsm8k" / "gsm8k_train.jsonl",
) -> ProgramData:
    """Converts a seeded random slice of `num_problems` GSM8K train problems and splits their variants."""
    out_dir.mkdir(parents=True, exist_ok=True)
    items = read_gsm8k(gsm8k_train)
    items = random.Random(seed).sample(items, min(num_problems, len(items)))
    with Executor(ExecutorConfig(workers=2, timeout_s=5.0)) as executor:
        report = convert_gsm8k(items, executor, progress=True)
        stream, _ = repopulate(
            report.records, executor, variants, seed, progress_total=len(report.records)
        )
        by_problem: dict[str, list[ProgramRecord]] = {}
        for variant in stream:
            by_problem.setdefault(variant.id.rsplit("/v", 1)[0], []).append(variant)

    def too_long(record: ProgramRecord) -> bool:
        return len(tokenizer.encode(render_program(record), add_bos=False)) > max_program_tokens

    records = [r for r in report.records if not any(map(too_long, [r, *by_problem.get(r.id, [])]))]
    train, heldout = [], []
    for record in records:
        own = by_problem.get(record.id, [])
        # A problem with too few variants to hold any out trains on all of them.
        keep = len(own) - heldout_per_problem if len(own) > heldout_per_problem else len(own)
        train.append(record)
        train.extend(own[:keep])
        heldout.extend(own[keep:])
    # A variant that happens to repeat a training question (same numbers drawn) is not held out.
    seen = {r.original_problem for r in train}
    heldout = [r for r in heldout if r.original_problem not in seen]
    write_jsonl(out_dir / TRAIN_FILE, train)
    write_jsonl(out_dir / HELDOUT_FILE, heldout)
    return ProgramData(out_dir, len(items), len(records), len(train), heldout)
