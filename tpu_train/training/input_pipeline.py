"""Training batches from a SeqIO task or mixture, sharded per host, resumable by step.

The input order is a pure function of (data config, seed, process count, step): each host reads shard
`process_index` of `process_count` (`seqio.ShardInfo`), shuffles with the run's seed, repeats forever and
batches; resuming at step s skips the first s batches. A checkpoint therefore needs no iterator state,
only the step. Exact replay requires the same process count (a different count re-shards the data).

Example:
    >>> # batches = global_batches(cfg.data, global_batch=128, seed=0, start_step=0)
    >>> # next(batches)["decoder_target_tokens"].shape  ->  (128 // jax.process_count(), seq_len)
"""

from __future__ import annotations

import importlib
import zlib
from collections.abc import Iterator

import jax
import ml_collections
import numpy as np

from tpu_train.training.step import BATCH_KEYS

CONVERTERS = ("decoder", "prefix_lm")


def feature_converter(name: str, pack: bool):
    import seqio

    if name == "decoder":
        return seqio.DecoderFeatureConverter(pack=pack)
    if name == "prefix_lm":
        # Loss on the targets (response + EOS) only; our model is causal over the whole row, so the
        # converter's bidirectional-prefix feature (decoder_causal_attention) is ignored.
        return seqio.PrefixLMFeatureConverter(pack=pack, loss_on_targets_only=True)
    raise ValueError(f"data.converter={name!r}; choose one of {CONVERTERS}")


def global_batches(
    data_cfg: ml_collections.ConfigDict,
    global_batch: int,
    seed: int,
    start_step: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Yields this host's part ([global_batch / process_count, seq_len] each) of every global batch from
    `start_step` on."""
    import seqio
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")  # TF only feeds data; keep accelerators for JAX
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    for module in data_cfg.registry_modules:
        importlib.import_module(module)  # registers the SeqIO tasks and mixtures
    ds = seqio.get_dataset(
        data_cfg.mixture,
        task_feature_lengths=dict(data_cfg.feature_lengths),
        feature_converter=feature_converter(data_cfg.converter, data_cfg.pack),
        dataset_split=data_cfg.split,
        shuffle=data_cfg.shuffle,
        num_epochs=None,
        shard_info=seqio.ShardInfo(index=process_index, num_shards=process_count),
        seed=seed,
        verbose=False,
    )
    options = tf.data.Options()
    options.deterministic = True
    ds = ds.with_options(options)
    ds = ds.batch(global_batch // process_count, drop_remainder=True).skip(start_step).prefetch(2)
    for batch in ds.as_numpy_iterator():
        yield with_packing_features(batch)


def with_packing_features(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Adds segment ids and positions to unpacked batches (one example per row, padding = segment 0)."""
    batch = dict(batch)
    targets = batch["decoder_target_tokens"]
    if "decoder_segment_ids" not in batch:
        batch["decoder_segment_ids"] = (targets != 0).astype(np.int32)
    if "decoder_positions" not in batch:
        batch["decoder_positions"] = np.broadcast_to(
            np.arange(targets.shape[1]), targets.shape
        ).copy()
    return {k: batch[k] for k in BATCH_KEYS}


def fingerprint(batch: dict[str, np.ndarray]) -> int:
    """A 32-bit checksum of a batch's tokens and weights, logged per step to prove two runs saw the same
    examples."""
    data = np.ascontiguousarray(batch["decoder_target_tokens"]).tobytes()
    data += np.ascontiguousarray(batch["decoder_loss_weights"]).tobytes()
    return zlib.crc32(data)
