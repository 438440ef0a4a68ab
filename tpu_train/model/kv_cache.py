"""A key/value cache of static shape for decoding, laid out like the stacked (scanned) layers.

    k, v      [layers, B, K, S, D]   keys (already rotated by RoPE) and values, in the compute dtype
    segment   [B, S] int32           1 where the slot holds a real token, 0 for padding / not yet written
    position  [B, S] int32           the position (RoPE angle, causal order) of the token in each slot
    index     [] int32               next slot to write; the same for every row

For a model whose layers are separate modules (the faster layout on CPU) k and v are instead tuples of one
[B, K, S, D] buffer per layer (`per_layer=True`), so each layer updates its own buffer in place.

Rows share one write index, so prompts are *left*-padded: every row's prompt ends in slot P-1 and each
decode step writes all rows' new tokens into the same slot. A row's positions still start at 0 on its
first real token (`position = slot - padding`), and its padding slots have segment 0, so padding is
invisible to it. Attention masks a slot unless its segment equals the query's and its position is not after
the query's, which also hides the unwritten tail of the cache.

Example:
    >>> from tpu_train.model import get_preset
    >>> cache = init_cache(get_preset("tiny_gqa"), batch=3, size=40)
    >>> cache.k.shape, cache.k.dtype, int(cache.index)
    ((2, 3, 2, 40, 16), dtype(bfloat16), 0)
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from tpu_train.model.config import LlamaConfig
from tpu_train.sharding import Sharder, constrain

# Logical axes of the cache arrays (the length axis stays whole: every step reads all of it).
# K before S: attention's batched dot products (over B and K) then read each head's slots contiguously,
# several times faster on CPU than the [B, S, K, D] layout of the model's activations.
KV_AXES = ("layers", "batch", "act_kv_heads", None, "head_dim")
SLOT_AXES = ("batch", None)


class KVCache(NamedTuple):
    k: jax.Array | tuple[jax.Array, ...]  # [layers, B, K, S, D], or per layer [B, K, S, D]
    v: jax.Array | tuple[jax.Array, ...]
    segment: jax.Array  # [B, S] int32
    position: jax.Array  # [B, S] int32
    index: jax.Array  # [] int32

    @property
    def size(self) -> int:
        """S, the number of slots per row."""
        return self.segment.shape[1]


def init_cache(
    cfg: LlamaConfig,
    batch: int,
    size: int,
    sharder: Sharder | None = None,
    per_layer: bool = False,
) -> KVCache:
    """An empty cache of `size` slots per row (zeros: no slot is visible until written). `per_layer`
    keeps one [B, K, S, D] buffer per layer (tuples), for models whose layers are separate modules."""

    def zeros(shape, axes):
        return constrain(jnp.zeros(shape, cfg.compute_dtype), sharder, axes)

    if per_layer:
        shape = (batch, cfg.num_kv_heads, size, cfg.head_dim)
        k = tuple(zeros(shape, KV_AXES[1:]) for _ in range(cfg.num_layers))
        v = tuple(zeros(shape, KV_AXES[1:]) for _ in range(cfg.num_layers))
    else:
        shape = (cfg.num_layers, batch, cfg.num_kv_heads, size, cfg.head_dim)
        k, v = zeros(shape, KV_AXES), zeros(shape, KV_AXES)
    segment = constrain(jnp.zeros((batch, size), jnp.int32), sharder, SLOT_AXES)
    position = constrain(jnp.zeros((batch, size), jnp.int32), sharder, SLOT_AXES)
    return KVCache(k, v, segment, position, jnp.zeros((), jnp.int32))
