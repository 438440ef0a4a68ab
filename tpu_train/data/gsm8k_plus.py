"""GSM8K+-style robustness set: each GSM8K test problem plus number variants, verified by execution.

Usage:
    python -m tpu_train.data.gsm8k_plus --input=data/gsm8k/gsm8k_test.jsonl \\
        --output=eval/gsm8k_plus/gsm8k_plus.jsonl --variants=2 --seed=0

Each test problem goes through the GSM8K converter; the verified program is repopulated with new
numbers exactly like training data (`repopulate.py`). Output lines, grouped by `group`:

    {"id": "gsm8k/test/5/v1", "group": "gsm8k/test/5", "variant": 1,
     "question": "...", "answer": "42", "has_program": true}

`variant` 0 is the original problem with its gold answer (`has_program`: whether one was derived);
problems without a derivable program, or whose variants all fail the checks, keep fewer variants:
`summary.json` beside the output counts them. Score as in GSM8K+: x = groups with at least one
variant right, y = groups with all right, and y/x.

Example:
    >>> rows = group_rows(GsmItem("gsm8k/test/0", "Q", "#### 7"), None, [])
    >>> rows[0]["answer"], rows[0]["variant"]
    ('7', 0)
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tpu_train.data.gsm8k_to_programs import GsmItem, convert, read_gsm8k
from tpu_train.data.records import ProgramRecord
from tpu_train.data.repopulate import repopulate
from tpu_train.data.verify import Executor, ExecutorConfig


def group_rows(
    item: GsmItem, seed: ProgramRecord | None, variants: list[ProgramRecord]
) -> list[dict[str, Any]]:
    """Output rows of one test problem: the original, then its variants."""
    gold = item.answer.rsplit("####", 1)[1].strip().replace(",", "")
    rows = [
        {
            "id": item.id,
            "group": item.id,
            "variant": 0,
            "question": item.question,
            "answer": gold,
            "has_program": seed is not None,
        }
    ]
    for number, variant in enumerate(variants, start=1):
        rows.append(
            {
                "id": variant.id,
                "group": item.id,
                "variant": number,
                "question": variant.original_problem,
                "answer": variant.gen_answer,
                "has_program": True,
            }
        )
    return rows


def build(
    input_path: str | Path,
    output: str | Path,
    variants: int,
    seed: int,
    executor: Executor,
    tries: int = 6,
) -> dict[str, Any]:
    """Write the robustness set and its summary; returns the summary."""
    items = read_gsm8k(input_path, split="test")
    report = convert(items, executor, progress=True)
    stream, stats = repopulate(
        report.records, executor, variants, seed, len(report.records), tries=tries
    )
    by_seed: dict[str, list[ProgramRecord]] = {}
    for variant in stream:
        by_seed.setdefault(variant.id.rsplit("/v", 1)[0], []).append(variant)
    seeds = {record.id: record for record in report.records}
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    complete = 0
    with open(output, "w", encoding="utf-8") as handle:
        for item in items:
            found = by_seed.get(item.id, [])
            complete += len(found) == variants
            for row in group_rows(item, seeds.get(item.id), found):
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    summary = {
        "problems": len(items),
        "with_program": len(report.records),
        "with_all_variants": complete,
        "variants_per_problem": variants,
        "rows": len(items) + stats.variants,
        "seed": seed,
        "conversion_rejections": report.reason_counts(),
        "variant_rejections": dict(stats.rejected_candidates),
    }
    (output.parent / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True, help="GSM8K test JSONL")
    parser.add_argument("--output", default="eval/gsm8k_plus/gsm8k_plus.jsonl")
    parser.add_argument("--variants", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--license", default=None, help="licence file to copy beside the output")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    with Executor(ExecutorConfig(timeout_s=5.0, workers=args.workers)) as executor:
        summary = build(args.input, args.output, args.variants, args.seed, executor)
    if args.license:
        shutil.copy(args.license, Path(args.output).parent / Path(args.license).name)
    print(json.dumps(summary, indent=2), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
