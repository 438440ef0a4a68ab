"""Look at what a task or mixture feeds the model.

Usage:
    python -m tpu_train.data.inspect --task=gsm8k_pot_mix --examples=2 --sequence_length=512 \\
        --histogram=/tmp/gsm8k_pot_mix_lengths.png

Prints decoded examples with the loss mask visible (tokens outside the loss are shown dim, inside
it in brackets: `[[...]]`), prompt/response token counts, how many examples were trimmed, and the
packing efficiency over `--rows` packed rows; writes a histogram of example lengths.

Example:
    >>> render_masked(["Q", ":", " 4", "</s>"], [0, 0, 1, 1])
    'Q:[[ 4</s>]]'
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import seqio
import tensorflow_datasets as tfds

from tpu_train.data.pipeline import feature_converter, packing_stats, task_feature_lengths
from tpu_train.data.sources import DEFAULT_TFDS_DIR, SHIPPED_TOKENIZER
from tpu_train.data.tasks import register_tasks


def render_masked(pieces: Sequence[str], weights: Sequence[int]) -> str:
    """Join decoded pieces, wrapping each run of loss tokens in `[[` `]]` (see module example)."""
    out, inside = [], False
    for piece, weight in zip(pieces, weights, strict=True):
        if weight and not inside:
            out.append("[[")
        elif not weight and inside:
            out.append("]]")
        inside = bool(weight)
        out.append(piece)
    if inside:
        out.append("]]")
    return "".join(out)


def _pieces(vocab: seqio.SentencePieceVocabulary, ids: Sequence[int]) -> list[str]:
    """Each id as readable text: "▁" becomes a space, the newline byte a newline."""
    sp = vocab.tokenizer
    return [sp.id_to_piece(int(i)).replace("▁", " ").replace("<0x0A>", "\n") for i in ids]


def _histogram(lengths: dict[str, list[int]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for label, values in lengths.items():
        ax.hist(values, bins=40, alpha=0.6, label=f"{label} (median {int(np.median(values))})")
    ax.set_xlabel("tokens per example")
    ax.set_ylabel("examples")
    ax.set_title(title)
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def inspect_task(
    name: str, sequence_length: int, examples: int, sample: int, rows: int, histogram: Path
) -> dict[str, float]:
    """Print examples and statistics of a registered task or mixture; returns the statistics."""
    provider = seqio.get_mixture_or_task(name)
    lengths = task_feature_lengths(sequence_length)
    vocab = provider.output_features["targets"].vocabulary
    plain = seqio.get_dataset(name, lengths, feature_converter(pack=False), shuffle=True, seed=0,
                              shard_info=seqio.ShardInfo(0, 1), verbose=False)  # fmt: skip
    prompt_len, response_len, trimmed = [], [], 0
    for index, row in enumerate(tfds.as_numpy(plain.take(sample))):
        tokens, weights = row["decoder_target_tokens"], row["decoder_loss_weights"]
        used = int((tokens > 0).sum())
        loss = int(weights.sum())
        prompt_len.append(used - loss)
        response_len.append(loss)
        trimmed += loss >= lengths["targets"] or used - loss >= lengths["inputs"]
        if index < examples:
            text = render_masked(_pieces(vocab, tokens[:used]), weights[:used])
            print(f"--- example {index}: {used - loss} prompt + {loss} loss tokens ---\n{text}\n")
    packed = seqio.get_dataset(name, lengths, feature_converter(pack=True), shuffle=True, seed=0,
                               shard_info=seqio.ShardInfo(0, 1), verbose=False)  # fmt: skip
    stats = packing_stats({k: v[None] for k, v in row.items()}
                          for row in tfds.as_numpy(packed.take(rows)))  # fmt: skip
    total = np.array(prompt_len) + np.array(response_len)
    summary = {
        "examples_sampled": len(total),
        "mean_prompt_tokens": float(np.mean(prompt_len)),
        "mean_response_tokens": float(np.mean(response_len)),
        "p95_total_tokens": float(np.percentile(total, 95)),
        "trimmed_fraction": trimmed / max(1, len(total)),
        "packed_rows": stats["rows"],
        "examples_per_row": stats["examples"] / max(1, stats["rows"]),
        "packing_efficiency": stats["efficiency"],
        "loss_token_fraction": stats["loss_tokens"] / max(1, stats["slots"]),
    }
    for key, value in summary.items():
        print(f"{key:>22}: {value:.3f}" if isinstance(value, float) else f"{key:>22}: {value}")
    _histogram({"prompt": prompt_len, "response+EOS": response_len, "total": list(total)},
               histogram, f"{name}: {len(total)} examples")  # fmt: skip
    print(f"{'histogram':>22}: {histogram}")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", required=True, help="task or mixture name")
    parser.add_argument("--sequence_length", type=int, default=512)
    parser.add_argument("--examples", type=int, default=2, help="examples to print")
    parser.add_argument("--sample", type=int, default=1000, help="examples for length statistics")
    parser.add_argument("--rows", type=int, default=200, help="packed rows for efficiency")
    parser.add_argument(
        "--histogram", default=None, help="PNG path (default /tmp/<task>_lengths.png)"
    )
    parser.add_argument("--tokenizer", default=str(SHIPPED_TOKENIZER))
    parser.add_argument("--data_dir", default=str(DEFAULT_TFDS_DIR))
    parser.add_argument("--manual_dir", default=None, help="folder with user-downloaded files")
    args = parser.parse_args(argv)
    register_tasks(args.tokenizer, args.data_dir, args.manual_dir)
    histogram = Path(args.histogram or f"/tmp/{args.task}_lengths.png")
    inspect_task(args.task, args.sequence_length, args.examples, args.sample, args.rows, histogram)
    return 0


if __name__ == "__main__":
    sys.exit(main())
