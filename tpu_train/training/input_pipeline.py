"""Training batches for the loop: `tpu_train.data.pipeline` batches, resumable by step, the same on any
number of hosts.

The order of global batches is a pure function of (data config, seed, step): every host reads the whole
mixture, shuffles it with the run's seed, repeats forever and batches `global_batch` rows; resuming at
step s skips the first s batches. Each host then places only the rows its devices hold
(`to_device`). A checkpoint therefore needs no iterator state, only the step, and a run resumed on
another number of hosts (a slice resized after a preemption) sees the same examples at every step:
the global batch fingerprint (`fingerprint`, logged per step) proves it. The price is that every host
tokenizes every row of the batch: a few hundred rows per step, small beside a step on a slice.

Example:
    >>> # batches = global_batches(cfg.data, global_batch=128, seed=0, start_step=0)
    >>> # next(batches)["decoder_target_tokens"].shape  ->  (128, seq_len) on every host
    >>> # batch = to_device(next(batches), batch_sharding)   # jax.Arrays over the whole mesh
"""

from __future__ import annotations

import importlib
import zlib
from collections.abc import Iterator

import jax
import ml_collections
import numpy as np

from tpu_train.data.prompts import ALPACA, PromptFormat
from tpu_train.data.sources import SHIPPED_TOKENIZER
from tpu_train.sharding import put_global
from tpu_train.training.step import BATCH_KEYS


def register(data_cfg: ml_collections.ConfigDict, prompt_format: PromptFormat = ALPACA) -> None:
    """Registers the SeqIO tasks and mixtures the config names: the project's tasks with the config's
    tokenizer, prompt format and manual directory, then any extra `registry_modules`."""
    from tpu_train.data import tasks

    tasks.register_tasks(
        vocab_path=data_cfg.tokenizer or SHIPPED_TOKENIZER,
        manual_dir=data_cfg.manual_dir or None,
        prompt_format=prompt_format,
    )
    for module in data_cfg.registry_modules:
        importlib.import_module(module)


def check_mixture(
    data_cfg: ml_collections.ConfigDict, prompt_format: PromptFormat = ALPACA
) -> None:
    """Raises ConfigError naming `data.mixture` when no task or mixture of that name is registered
    (checked before the model is built, not when the first batch is read)."""
    import seqio

    from tpu_train.training.config_checks import ConfigError

    register(data_cfg, prompt_format)
    known = set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names())
    if data_cfg.mixture not in known:
        ours = sorted(n for n in known if not n.startswith("_"))
        raise ConfigError(
            f"data.mixture={data_cfg.mixture!r} is not a registered SeqIO task or mixture; known: "
            f"{', '.join(ours[:30])}{' ...' if len(ours) > 30 else ''} (data.registry_modules "
            "imports modules that register more)"
        )


def count_overlong(
    data_cfg: ml_collections.ConfigDict, prompt_format: PromptFormat = ALPACA
) -> tuple[int, int]:
    """(examples left out as longer than the feature lengths, examples in all) of the config's
    mixture: one pass over its tokenized examples."""
    from tpu_train.data import tasks

    register(data_cfg, prompt_format)
    return tasks.count_overlong(data_cfg.mixture, dict(data_cfg.feature_lengths), data_cfg.split)


def global_batches(
    data_cfg: ml_collections.ConfigDict,
    global_batch: int,
    seed: int,
    start_step: int = 0,
    prompt_format: PromptFormat = ALPACA,
) -> Iterator[dict[str, np.ndarray]]:
    """Yields every global batch ([global_batch, seq_len] each) from `start_step` on; the same on
    every host."""
    import tensorflow as tf

    from tpu_train.data import pipeline

    tf.config.set_visible_devices([], "GPU")  # TF only feeds data; keep accelerators for JAX
    register(data_cfg, prompt_format)
    ds = pipeline.get_dataset(
        data_cfg.mixture,
        sequence_length=data_cfg.seq_len,
        batch_size=global_batch,
        split=data_cfg.split,
        seed=seed,
        shuffle=data_cfg.shuffle,
        pack=data_cfg.pack,
        feature_lengths=dict(data_cfg.feature_lengths),
    )
    for batch in ds.skip(start_step).as_numpy_iterator():
        yield with_packing_features(batch)


def to_device(
    batch: dict[str, np.ndarray], sharding: jax.sharding.Sharding
) -> dict[str, jax.Array]:
    """A global batch as jax.Arrays laid out by `sharding`; each host copies only the rows its own
    devices hold."""
    return {k: put_global(batch[k], sharding) for k in BATCH_KEYS}


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
    """A 32-bit checksum of a global batch's tokens and weights, logged per step to prove that two runs
    (on any numbers of hosts) saw the same examples."""
    data = np.ascontiguousarray(batch["decoder_target_tokens"]).tobytes()
    data += np.ascontiguousarray(batch["decoder_loss_weights"]).tobytes()
    return zlib.crc32(data)
