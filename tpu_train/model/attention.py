"""Causal grouped-query attention over packed sequences: an XLA path and a Pallas (splash) TPU path.

Shapes: B batch, L query length, S key length, H query heads, K key/value heads, G = H // K query heads per
K/V head, D head_dim. Query heads are *grouped* over their shared K/V head ([B, L, K, G, D] against
[B, S, K, D]) so K/V are never repeated in memory.

Masking: a query attends to a key when both carry the same segment id and the key's position is not after
the query's. Packed rows (several examples in one row, segment ids 1, 2, ...) therefore never attend across
examples, and padding (segment 0) only attends to padding.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from tpu_train.sharding import Sharder

# Large but finite: a row whose keys are all masked (padding) yields a uniform softmax instead of NaN.
_MASKED = -0.7 * float(jnp.finfo(jnp.float32).max)


def xla_attention(
    q: jax.Array,  # [B, L, H, D], already scaled by 1/sqrt(D)
    k: jax.Array,  # [B, S, K, D]
    v: jax.Array,  # [B, S, K, D]
    q_segment_ids: jax.Array,  # [B, L]
    kv_segment_ids: jax.Array,  # [B, S]
    q_positions: jax.Array,  # [B, L]
    kv_positions: jax.Array,  # [B, S]
) -> jax.Array:  # [B, L, H, D]
    """Plain dot-product attention that XLA fuses on any backend; softmax in float32."""
    b, length, h, d = q.shape
    kv_heads = k.shape[2]
    # Scores in [B, K, G, L, S], the order XLA's dot produces from these operand orders (batch dims, then
    # the free dims of each side): any other order costs a transposing copy of the scores, and of their
    # gradient, in every layer. Transposing q and the output instead is 1/S of that traffic.
    q = q.reshape(b, length, kv_heads, h // kv_heads, d).transpose(0, 2, 3, 1, 4)  # [B, K, G, L, D]
    logits = jnp.einsum("bkgld,bskd->bkgls", q, k, preferred_element_type=jnp.float32)
    visible = (kv_positions[:, None, :] <= q_positions[:, :, None]) & (
        kv_segment_ids[:, None, :] == q_segment_ids[:, :, None]
    )  # [B, L, S] bool: no float mask is materialised
    logits = jnp.where(visible[:, None, None], logits, _MASKED)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgls,bskd->bkgld", probs, v).transpose(0, 3, 1, 2, 4)  # [B, L, K, G, D]
    return out.reshape(b, length, h, d)


def cached_attention(
    q: jax.Array,  # [B, L, H, D], already scaled by 1/sqrt(D)
    cached_k: jax.Array,  # [B, K, S, D] keys in the cache
    cached_v: jax.Array,  # [B, K, S, D]
    segments: jax.Array,  # [B, L] of the queries
    positions: jax.Array,  # [B, L]
    cached_segments: jax.Array,  # [B, S]
    cached_positions: jax.Array,  # [B, S]
    k: jax.Array | None = None,  # [B, K, L, D] keys of the new tokens, when not in the cache yet
    v: jax.Array | None = None,  # [B, K, L, D]
) -> jax.Array:  # [B, L, H, D]
    """`xla_attention` over the cache's [B, K, S, D] layout, optionally extended by the new tokens' own
    keys/values (the concatenation [cache; new] without building it: one softmax spans both parts).

    Masking is `xla_attention`'s rule: a key is visible when its segment equals the query's and its
    position is not after the query's.
    """
    b, length, h, d = q.shape
    kv_heads = cached_k.shape[1]
    # [B, K, G, L, D]: every einsum below then yields its dot's natural order (batch dims, lhs free dims,
    # rhs free dims), so XLA copies no scores; for a decode step (L = 1) both transposes are free. The
    # [B, L, K, G, D] order instead cost a transposing copy per layer: decoding 32 rows over 448 slots
    # took 5.3 ms of attention per layer against 2.3 ms now (CPU, measured).
    qg = q.reshape(b, length, kv_heads, h // kv_heads, d).transpose(0, 2, 3, 1, 4)

    def visible(kv_segments, kv_positions):  # [B, 1, 1, L, keys]
        ok = (kv_positions[:, None, :] <= positions[:, :, None]) & (
            kv_segments[:, None, :] == segments[:, :, None]
        )
        return ok[:, None, None]

    scores = jnp.einsum("bkgld,bksd->bkgls", qg, cached_k, preferred_element_type=jnp.float32)
    parts = [(jnp.where(visible(cached_segments, cached_positions), scores, _MASKED), cached_v)]
    if k is not None:
        scores = jnp.einsum("bkgld,bkmd->bkglm", qg, k, preferred_element_type=jnp.float32)
        parts.append((jnp.where(visible(segments, positions), scores, _MASKED), v))
    top = functools.reduce(jnp.maximum, [s.max(axis=-1, keepdims=True) for s, _ in parts])
    probs = [(jnp.exp(s - top), values) for s, values in parts]
    total = sum(p.sum(axis=-1, keepdims=True) for p, _ in probs)  # [B, K, G, L, 1]
    out = sum(
        jnp.einsum("bkgls,bksd->bkgld", p.astype(values.dtype), values) for p, values in probs
    )
    out = (out / total.astype(out.dtype)).transpose(0, 3, 1, 2, 4)  # [B, L, K, G, D]
    return out.reshape(b, length, h, d)


def splash_attention(
    q: jax.Array,  # [B, L, H, D], already scaled
    k: jax.Array,  # [B, L, K, D]
    v: jax.Array,  # [B, L, K, D]
    segment_ids: jax.Array,  # [B, L]
    *,
    sharder: Sharder | None,
    interpret: bool,
) -> jax.Array:  # [B, L, H, D]
    """Self-attention through the Pallas splash kernel (TPU; `interpret=True` runs it anywhere).

    Causality is by index, which equals the position rule for training rows (positions increase within each
    segment). Each K/V head runs the kernel's multi-query form over its group of G query heads, so GQA
    needs no K/V repetition here either. On a multi-device mesh the kernel runs per shard under
    `jax.shard_map`, batch split over the batch axes and K/V heads over the tensor axis.
    """
    b, length, h, d = q.shape
    kv_heads = k.shape[2]
    groups = h // kv_heads
    kernel = _splash_kernel(length, groups, interpret)
    qg = q.reshape(b, length, kv_heads, groups, d).transpose(0, 2, 3, 1, 4)  # [B, K, G, L, D]
    kt, vt = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, K, L, D]

    def run(qg, kt, vt, seg):
        from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk

        def one(q1, k1, v1, s1):  # q1 [G, L, D], k1/v1 [L, D], s1 [L]
            return kernel(q1, k1, v1, segment_ids=sk.SegmentIds(q=s1, kv=s1))

        per_head = jax.vmap(one, in_axes=(0, 0, 0, None))
        return jax.vmap(per_head, in_axes=(0, 0, 0, 0))(qg, kt, vt, seg)

    if sharder is not None and sharder.mesh.size > 1:
        batch = sharder.spec(("batch",), (b,))[0]
        heads = sharder.spec(("act_kv_heads",), (kv_heads,))[0]
        spec = PartitionSpec(batch, heads, None, None, None)
        kv_spec = PartitionSpec(batch, heads, None, None)
        run = jax.shard_map(
            run,
            mesh=sharder.mesh,
            in_specs=(spec, kv_spec, kv_spec, PartitionSpec(batch, None)),
            out_specs=spec,
            check_vma=False,
        )
    out = run(qg, kt, vt, segment_ids)  # [B, K, G, L, D]
    return out.transpose(0, 3, 1, 2, 4).reshape(b, length, h, d)


@functools.lru_cache(maxsize=32)
def _splash_kernel(length: int, groups: int, interpret: bool):
    """Builds (once per shape) a causal multi-query splash kernel for `groups` heads over `length`."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    block = min(512, length)
    if length % block or block % 128:
        raise ValueError(
            f"splash attention needs a sequence length that is a multiple of 128 (got {length}); "
            "pad the batch or use attention='xla'"
        )
    sizes = sk.BlockSizes(
        block_q=block, block_kv=block, block_kv_compute=block,
        block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
        block_q_dq=block, block_kv_dq=block,
    )  # fmt: skip
    mask = sm.MultiHeadMask([sm.CausalMask((length, length)) for _ in range(groups)])
    # The kernel keeps device arrays describing the mask; build them as concrete values even when first
    # called inside a trace, or the cached kernel would hold that trace's tracers.
    with jax.ensure_compile_time_eval():
        return sk.make_splash_mqa_single_device(mask, block_sizes=sizes, interpret=interpret)
