"""Data-pipeline throughput: tokenize + pack examples/s against the training step, and variants/s.

Usage:
    .venv/bin/python bench/bench_data.py --mixture=gsm8k_pot_mix --sequence_length=512 \
        --batch_size=8 --train_tokens_per_s=1000 --repopulate_records=200

The pipeline must outpace the trainer: `--train_tokens_per_s` is what one training step consumes at
the default config (about 840 tokens/s for a 58M Llama on these 2-core CPUs, see
design-notes section 7; pass your measured figure). The pipeline is timed on one host after a warm-up
batch (TFDS preparation and tokenizer loading excluded) and reported as packed rows/s, examples/s and
tokens/s; `headroom` = pipeline tokens/s / training tokens/s must exceed 1.
Repopulation is timed on the first `--repopulate_records` shipped GSM8K program records.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import seqio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tpu_train.data.pipeline import get_dataset  # noqa: E402
from tpu_train.data.records import read_program_records  # noqa: E402
from tpu_train.data.repopulate import repopulate  # noqa: E402
from tpu_train.data.sources import DEFAULT_TFDS_DIR, SHIPPED_TOKENIZER  # noqa: E402
from tpu_train.data.tasks import DEFAULT_MIXTURES, register_tasks  # noqa: E402
from tpu_train.data.verify import Executor, ExecutorConfig  # noqa: E402


def bench_pipeline(mixture: str, sequence_length: int, batch_size: int, batches: int) -> dict:
    ds = get_dataset(mixture, sequence_length, batch_size, shard_info=seqio.ShardInfo(0, 1))
    iterator = ds.as_numpy_iterator()
    next(iterator)  # warm-up: graph tracing, file opening, shuffle buffer fill
    start = time.perf_counter()
    examples = tokens = 0
    for _ in range(batches):
        batch = next(iterator)
        seg = batch["decoder_segment_ids"]
        tokens += int((seg > 0).sum())
        examples += int(sum(len(np.unique(row[row > 0])) for row in seg))
    seconds = time.perf_counter() - start
    return {
        "rows_per_s": batches * batch_size / seconds,
        "examples_per_s": examples / seconds,
        "tokens_per_s": tokens / seconds,
        "packing_efficiency": tokens / (batches * batch_size * sequence_length),
        "seconds": seconds,
    }


def bench_repopulate(records: int, variants: int, workers: int) -> dict:
    path = ROOT / "data" / "programs" / "gsm8k_train_programs.jsonl.gz"
    seeds, _ = read_program_records(path)
    with Executor(ExecutorConfig(timeout_s=5.0, workers=workers)) as executor:
        stream, stats = repopulate(seeds[:records], executor, variants, seed=0)
        produced = sum(1 for _ in stream)
    return {
        "records": records,
        "variants": produced,
        "candidates_executed": stats.candidates,
        "variants_per_s": stats.variants_per_second,
        "candidates_per_s": stats.candidates / stats.seconds if stats.seconds else 0.0,
        "seconds": stats.seconds,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mixture", default="gsm8k_pot_mix", choices=sorted(DEFAULT_MIXTURES))
    parser.add_argument("--sequence_length", type=int, default=512)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--train_tokens_per_s", type=float, default=1000.0)
    parser.add_argument("--repopulate_records", type=int, default=200)
    parser.add_argument("--variants", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--data_dir", default=str(DEFAULT_TFDS_DIR))
    parser.add_argument("--output", default=None, help="also write the JSON result here")
    args = parser.parse_args()
    register_tasks(SHIPPED_TOKENIZER, args.data_dir)
    pipeline = bench_pipeline(args.mixture, args.sequence_length, args.batch_size, args.batches)
    result = {
        "mixture": args.mixture,
        "sequence_length": args.sequence_length,
        "batch_size": args.batch_size,
        "pipeline": pipeline,
        "train_tokens_per_s": args.train_tokens_per_s,
        "headroom": pipeline["tokens_per_s"] / args.train_tokens_per_s,
        "repopulate": bench_repopulate(args.repopulate_records, args.variants, args.workers),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")
    return 0 if result["headroom"] > 1 else 1


if __name__ == "__main__":
    sys.exit(main())
