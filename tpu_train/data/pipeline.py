"""Packed, loss-masked training batches from a SeqIO task or mixture.

`get_dataset` runs the task through `seqio.PrefixLMFeatureConverter(loss_on_targets_only=True)`,
which packs several examples per row, and then drops the first slot of every example (see below), so
that a row of length L holds, for an example with tokens x_0 x_1 ... x_n (x_0 the BOS if the tokenizer
adds one, else the first prompt token; x_n the EOS):

    decoder_input_tokens    [x_0 ... x_{n-1} | next example ... | 0 0]   what the model reads
    decoder_target_tokens   [x_1 ... x_n     | next example ... | 0 0]   what it predicts
    decoder_loss_weights    1 where the target is a response or EOS token, 0 on prompt and padding
    decoder_segment_ids     1, 2, ... per packed example, 0 on padding
    decoder_positions       0.. within each example
    decoder_causal_attention (prefix-LM mask; a causal decoder ignores it)

Why the drop: SeqIO's autoregressive shift starts every example's input with id 0, so the model would
train on [0, BOS, prompt...] with the prompt one position late, while the sampler feeds [BOS, prompt...].
Without the slot whose input is that 0 (its target, x_0, is never a loss target), training rows and
sampler inputs are the same token sequence at the same positions.

Padding is id 0 (SeqIO's pad id) and is told apart from tokens by segment id 0 and loss weight 0, so a
tokenizer whose id 0 is a real token, or whose pad token is its EOS (SmolLM2), still learns EOS. Every
host reads the whole mixture, so the batches do not depend on the number of hosts
(`tpu_train.training.input_pipeline`).

Example:
    >>> register_tasks()  # doctest: +SKIP
    >>> ds = get_dataset("gsm8k_pot_mix", sequence_length=512, batch_size=8)  # doctest: +SKIP
    >>> batch = next(ds.as_numpy_iterator())  # doctest: +SKIP
    >>> batch["decoder_target_tokens"].shape  # doctest: +SKIP
    (8, 512)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import seqio
import tensorflow as tf


def task_feature_lengths(sequence_length: int, inputs_fraction: float = 0.5) -> dict[str, int]:
    """Trim lengths of prompt and response such that they pack into `sequence_length`.

    Example:
        >>> task_feature_lengths(512)
        {'inputs': 256, 'targets': 256}
    """
    inputs = int(sequence_length * inputs_fraction)
    return {"inputs": inputs, "targets": sequence_length - inputs}


def feature_converter(pack: bool = True) -> seqio.FeatureConverter:
    """The prefix-LM converter with the loss on targets (response + EOS) only."""
    return seqio.PrefixLMFeatureConverter(pack=pack, loss_on_targets_only=True)


def get_dataset(
    name: str,
    sequence_length: int,
    batch_size: int,
    split: str = "train",
    shard_info: seqio.ShardInfo | None = None,
    seed: int | None = 0,
    shuffle: bool = True,
    num_epochs: int | None = None,
    pack: bool = True,
    feature_lengths: Mapping[str, int] | None = None,
) -> tf.data.Dataset:
    """Batches of model features for a registered task or mixture (tasks must be registered).

    `shard_info` (default: the whole data) reads one shard of the data. With `num_epochs=None`
    the data repeats forever. `feature_lengths` ({"inputs", "targets"}, summing to
    `sequence_length`) overrides the even prompt/response split. The order is deterministic for a
    seed, so skipping the first n batches resumes exactly.
    """
    lengths = dict(feature_lengths) if feature_lengths else task_feature_lengths(sequence_length)
    if sum(lengths.values()) != sequence_length:
        raise ValueError(f"feature lengths {lengths} must sum to sequence_length={sequence_length}")
    ds = seqio.get_dataset(
        name,
        task_feature_lengths=lengths,
        feature_converter=feature_converter(pack),
        dataset_split=split,
        shuffle=shuffle,
        num_epochs=num_epochs,
        shard_info=shard_info,
        seed=seed,
        verbose=False,
    )
    options = tf.data.Options()
    options.deterministic = True
    ds = ds.map(drop_start_slots, num_parallel_calls=tf.data.AUTOTUNE)
    return (
        ds.with_options(options).batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    )


def drop_start_slots(row: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """Removes each example's first slot from one converted row (whose input is the converter's start
    id 0) and pads the row back to its length; positions restart at 0 (module docstring).

    Example (unpacked; [5, 6, 7] an example, 0 padding):
        >>> row = {"decoder_target_tokens": tf.constant([5, 6, 7, 0]),
        ...        "decoder_input_tokens": tf.constant([0, 5, 6, 0]),
        ...        "decoder_loss_weights": tf.constant([0, 1, 1, 0])}
        >>> {k: v.numpy().tolist() for k, v in drop_start_slots(row).items()}
        {'decoder_target_tokens': [6, 7, 0, 0], 'decoder_input_tokens': [5, 6, 0, 0], 'decoder_loss_weights': [1, 1, 0, 0]}
    """
    length = tf.shape(row["decoder_target_tokens"])[0]
    if "decoder_segment_ids" in row:
        starts = tf.logical_and(
            tf.equal(row["decoder_positions"], 0), tf.greater(row["decoder_segment_ids"], 0)
        )
    else:
        starts = tf.equal(tf.range(length), 0)
    keep = tf.logical_not(starts)

    def shrink(values: tf.Tensor) -> tf.Tensor:
        kept = tf.boolean_mask(values, keep)
        return tf.pad(kept, [[0, length - tf.shape(kept)[0]]])

    out = {name: shrink(values) for name, values in row.items()}
    if "decoder_positions" in row:
        out["decoder_positions"] = tf.maximum(out["decoder_positions"] - 1, 0)
    return out


def packing_stats(batches: Iterable[Mapping[str, np.ndarray]]) -> dict[str, float]:
    """Token accounting over batches: efficiency = non-pad tokens / all slots.

    Example:
        >>> b = {"decoder_segment_ids": np.array([[1, 1, 2, 0]]),
        ...      "decoder_loss_weights": np.array([[0, 1, 1, 0]])}
        >>> packing_stats([b])
        {'rows': 1, 'examples': 2, 'tokens': 3, 'loss_tokens': 2, 'slots': 4, 'efficiency': 0.75}
    """
    rows = examples = tokens = loss_tokens = slots = 0
    for batch in batches:
        seg = np.asarray(batch["decoder_segment_ids"])
        rows += seg.shape[0]
        slots += seg.size
        tokens += int((seg > 0).sum())
        examples += int(sum(len(np.unique(row[row > 0])) for row in seg))
        loss_tokens += int(np.asarray(batch["decoder_loss_weights"]).sum())
    return {
        "rows": rows,
        "examples": examples,
        "tokens": tokens,
        "loss_tokens": loss_tokens,
        "slots": slots,
        "efficiency": tokens / slots if slots else 0.0,
    }
