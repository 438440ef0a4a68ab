"""The Llama-family decoder in Flax NNX.

    tokens [B, L] -> embed -> num_layers x (x + Attention(RMSNorm(x)); x + SwiGLU(RMSNorm(x))) -> RMSNorm
                  -> lm_head -> logits [B, L, vocab] (float32)

Every parameter is an `nnx.Param` carrying `logical_axes` metadata (see `tpu_train.sharding`); weights are
stored in `param_dtype` and cast to `compute_dtype` where they are used, so float32 master weights train
with bfloat16 matmuls. Kernels are laid out input-major ([in, out] or [in, heads, head_dim]) and there are no
biases.

Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from tpu_train.model.config import get_preset
    >>> model = Llama(get_preset("tiny", compute_dtype="float32"), rngs=nnx.Rngs(0))
    >>> model(jnp.zeros((2, 16), jnp.int32)).shape
    (2, 16, 512)
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from tpu_train.model import lora, rope
from tpu_train.model.attention import cached_attention, splash_attention, xla_attention
from tpu_train.model.config import LlamaConfig
from tpu_train.model.dense import dense
from tpu_train.model.kv_cache import KV_AXES, KVCache
from tpu_train.sharding import Sharder, constrain

_INIT_STDDEV = 0.02  # Hugging Face's `initializer_range` for Llama


def _param(
    rngs: nnx.Rngs | None,
    shape: tuple[int, ...],
    axes: tuple[str, ...],
    dtype: str,
    ones: bool = False,
) -> nnx.Param:
    value = (
        jnp.ones(shape, dtype)
        if ones
        else _INIT_STDDEV * jax.random.normal(rngs.params(), shape, dtype)
    )
    return nnx.Param(value, logical_axes=axes)


class RMSNorm(nnx.Module):
    def __init__(self, cfg: LlamaConfig):
        self.eps = cfg.rms_norm_eps
        self.scale = _param(None, (cfg.hidden_size,), ("norm",), cfg.param_dtype, ones=True)

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (normed * self.scale[...].astype(jnp.float32)).astype(x.dtype)


class LayerCache(NamedTuple):
    """One layer's part of the KV cache, as a forward pass over new tokens sees it."""

    keys: jax.Array  # [B, K, S, D]
    values: jax.Array  # [B, K, S, D]
    # [B, S] slot segments / positions that mask the cached part: before the new tokens are written for
    # stacked layers (the new tokens join separately), after it for a layer's own buffer.
    segment: jax.Array
    position: jax.Array
    index: jax.Array  # [] slot of the first new token


class Attention(nnx.Module):
    def __init__(self, cfg: LlamaConfig, rngs: nnx.Rngs, sharder: Sharder | None):
        e, h, k, d = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        p = cfg.param_dtype
        self.cfg, self.sharder = cfg, sharder
        self.q_proj = _param(rngs, (e, h, d), ("embed", "heads", "head_dim"), p)
        self.k_proj = _param(rngs, (e, k, d), ("embed", "kv_heads", "head_dim"), p)
        self.v_proj = _param(rngs, (e, k, d), ("embed", "kv_heads", "head_dim"), p)
        self.o_proj = _param(rngs, (h, d, e), ("heads", "head_dim", "embed"), p)
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            lora.add_adapters(self, cfg, rngs, name)

    def __call__(
        self,
        x: jax.Array,
        sin: jax.Array,
        cos: jax.Array,
        segment_ids: jax.Array,
        positions: jax.Array,
        cache: LayerCache | None = None,
    ) -> jax.Array | tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        """Self-attention over `x`; with a `cache`, attention over the cached slots and the new tokens,
        returning (output, (keys, values)):
          - separate layers (each with its own cache buffer): the new keys/values are written into the
            buffer in place and attention reads the buffer; returned: the updated buffers;
          - stacked layers (under `lax.scan`): the cache is only read, the new tokens' own keys/values
            join the softmax; returned: those new [B, K, L, D] keys/values, which the model writes for
            every layer at once after the scan (a write inside the scan made XLA copy the whole cache
            per layer).
        """
        cfg, dt = self.cfg, self.cfg.compute_dtype
        q = lora.project(self, "q_proj", x)  # [B, L, H, D]
        k = lora.project(self, "k_proj", x)  # [B, L, K, D]
        v = lora.project(self, "v_proj", x)
        q = constrain(q, self.sharder, ("batch", "length", "act_heads", "head_dim"))
        k = constrain(k, self.sharder, ("batch", "length", "act_kv_heads", "head_dim"))
        v = constrain(v, self.sharder, ("batch", "length", "act_kv_heads", "head_dim"))
        q = rope.apply_rope(q, sin, cos) * jnp.asarray(cfg.head_dim**-0.5, dt)
        k = rope.apply_rope(k, sin, cos)
        if cache is not None:
            out, new = self._cached(q, k, v, segment_ids, positions, cache)
            return lora.project(self, "o_proj", out), new
        q, k, v = (
            checkpoint_name(q, "query"),
            checkpoint_name(k, "key"),
            checkpoint_name(v, "value"),
        )
        if cfg.attention == "splash":
            out = splash_attention(
                q, k, v, segment_ids, sharder=self.sharder, interpret=cfg.attention_interpret
            )
        else:
            out = xla_attention(q, k, v, segment_ids, segment_ids, positions, positions)
        out = checkpoint_name(out, "attention")
        return lora.project(self, "o_proj", out)

    def _cached(self, q, k, v, segments, positions, cache: LayerCache):
        k = k.astype(cache.keys.dtype).transpose(0, 2, 1, 3)  # [B, K, L, D], the cache's layout
        v = v.astype(cache.values.dtype).transpose(0, 2, 1, 3)
        if self.cfg.scan_layers:
            out = cached_attention(
                q,
                cache.keys,
                cache.values,
                segments,
                positions,
                cache.segment,
                cache.position,
                k,
                v,
            )
            return out, (k, v)
        at = (0, 0, cache.index, 0)
        keys = jax.lax.dynamic_update_slice(cache.keys, k, at)
        values = jax.lax.dynamic_update_slice(cache.values, v, at)
        out = cached_attention(q, keys, values, segments, positions, cache.segment, cache.position)
        keys = constrain(keys, self.sharder, KV_AXES[1:])
        values = constrain(values, self.sharder, KV_AXES[1:])
        return out, (keys, values)


class MLP(nnx.Module):
    """SwiGLU: down(silu(x @ gate) * (x @ up))."""

    def __init__(self, cfg: LlamaConfig, rngs: nnx.Rngs, sharder: Sharder | None):
        e, f, p = cfg.hidden_size, cfg.intermediate_size, cfg.param_dtype
        self.cfg, self.sharder = cfg, sharder
        self.gate_proj = _param(rngs, (e, f), ("embed", "mlp"), p)
        self.up_proj = _param(rngs, (e, f), ("embed", "mlp"), p)
        self.down_proj = _param(rngs, (f, e), ("mlp", "embed"), p)
        for name in ("gate_proj", "up_proj", "down_proj"):
            lora.add_adapters(self, cfg, rngs, name)

    def __call__(self, x: jax.Array) -> jax.Array:
        gate, up = lora.project(self, "gate_proj", x), lora.project(self, "up_proj", x)
        hidden = constrain(jax.nn.silu(gate) * up, self.sharder, ("batch", "length", "act_mlp"))
        return lora.project(self, "down_proj", hidden)


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: LlamaConfig, rngs: nnx.Rngs, sharder: Sharder | None):
        self.sharder = sharder
        self.attn_norm = RMSNorm(cfg)
        self.attn = Attention(cfg, rngs, sharder)
        self.mlp_norm = RMSNorm(cfg)
        self.mlp = MLP(cfg, rngs, sharder)

    def __call__(
        self,
        x: jax.Array,
        sin: jax.Array,
        cos: jax.Array,
        segment_ids: jax.Array,
        positions: jax.Array,
        cache: LayerCache | None = None,
    ) -> jax.Array | tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        """The layer's output; with a `cache`, (output, what `Attention` returns for the cache)."""
        attended = self.attn(self.attn_norm(x), sin, cos, segment_ids, positions, cache)
        if cache is not None:
            attended, new = attended
        x = x + attended
        x = x + self.mlp(self.mlp_norm(x))
        x = constrain(x, self.sharder, ("batch", "length", "act_embed"))
        return x if cache is None else (x, new)


def remat_policy(name: str):
    """The named rematerialisation policies of `LlamaConfig.remat_policy` (None = no remat).

    - none: keep every activation (fastest, most memory);
    - full: keep only each layer's input, recompute the layer in the backward pass (least memory);
    - save_dots: keep matmul outputs, recompute elementwise work;
    - save_dots_no_batch: keep weight matmul outputs only (not attention's batched q.k and p.v);
    - save_qkv_attn: keep the q/k/v projections and the attention output.
    """
    policies = jax.checkpoint_policies
    # dense()'s matmuls sit inside a custom VJP, out of sight of the dot policies: saved by name instead.
    weight_matmuls = policies.save_only_these_names("dense")
    return {
        "none": None,
        "full": policies.nothing_saveable,
        "save_dots": policies.save_from_both_policies(policies.checkpoint_dots, weight_matmuls),
        "save_dots_no_batch": policies.save_from_both_policies(
            policies.checkpoint_dots_with_no_batch_dims, weight_matmuls
        ),
        "save_qkv_attn": policies.save_only_these_names("query", "key", "value", "attention"),
    }[name]


class Llama(nnx.Module):
    """Decoder-only Llama. With `cfg.scan_layers`, `self.layers` is one DecoderLayer whose parameters carry a
    leading "layers" axis and are run with `jax.lax.scan`; otherwise it is an `nnx.List` of layers."""

    def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs, sharder: Sharder | None = None):
        self.cfg, self.sharder = cfg, sharder
        self.embed = _param(
            rngs, (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"), cfg.param_dtype
        )
        if cfg.scan_layers:
            self.layers = _stacked_layers(cfg, rngs, sharder)
        else:
            self.layers = nnx.List(
                [DecoderLayer(cfg, rngs, sharder) for _ in range(cfg.num_layers)]
            )
        self.final_norm = RMSNorm(cfg)
        if not cfg.tie_embeddings:
            self.lm_head = _param(
                rngs, (cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"), cfg.param_dtype
            )

    def __call__(
        self,
        tokens: jax.Array,  # [B, L] int
        positions: jax.Array | None = None,  # [B, L] int; default 0..L-1
        segment_ids: jax.Array | None = None,  # [B, L] int; default all 1 (one sequence per row)
        cache: KVCache | None = None,
    ) -> jax.Array | tuple[jax.Array, KVCache]:  # [B, L, vocab] float32 logits (, the new cache)
        if cache is None:
            return self.logits(self.hidden_states(tokens, positions, segment_ids))
        hidden, cache = self.hidden_states(tokens, positions, segment_ids, cache)
        return self.logits(hidden), cache

    def hidden_states(
        self,
        tokens: jax.Array,
        positions: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
        cache: KVCache | None = None,
    ) -> jax.Array | tuple[jax.Array, KVCache]:  # [B, L, hidden] after the final norm (, new cache)
        """The final hidden states. With a `cache` (decoding), `tokens` are the next tokens after what
        the cache holds: their keys/values go into slots index..index+L-1, they attend to every slot
        written so far, and the advanced cache is returned too. Stacked layers need the stacked cache
        ([layers, B, K, S, D]), separate layers one buffer per layer (`init_cache(per_layer=True)`)."""
        cfg = self.cfg
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
        if segment_ids is None:
            segment_ids = jnp.ones_like(tokens)
        x = jnp.take(self.embed[...], tokens, axis=0).astype(cfg.compute_dtype)
        x = constrain(x, self.sharder, ("batch", "length", "act_embed"))
        inv_freq = rope.inverse_frequencies(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
        sin, cos = rope.sin_cos(positions, inv_freq)
        if cache is not None:
            x, cache = self._through_cache(x, sin, cos, segment_ids, positions, cache)
            return self.final_norm(x), cache
        policy = remat_policy(cfg.remat_policy)

        def apply_layer(x, layer_graph, layer_params):
            return nnx.merge(layer_graph, layer_params)(x, sin, cos, segment_ids, positions)

        if cfg.remat_policy != "none":
            apply_layer = jax.checkpoint(apply_layer, policy=policy, static_argnums=(1,))
        if cfg.scan_layers:
            graph, params = nnx.split(self.layers)
            x, _ = jax.lax.scan(lambda h, p: (apply_layer(h, graph, p), None), x, params)
        else:
            for layer in self.layers:
                x = apply_layer(x, *nnx.split(layer))
        return self.final_norm(x)

    def _through_cache(self, x, sin, cos, segments, positions, cache: KVCache):
        segments, positions = segments.astype(jnp.int32), positions.astype(jnp.int32)
        index = cache.index
        # The slots' metadata with the new tokens in, computed once (not once per layer).
        slot_segment = jax.lax.dynamic_update_slice(cache.segment, segments, (0, index))
        slot_position = jax.lax.dynamic_update_slice(cache.position, positions, (0, index))
        seen = (
            (cache.segment, cache.position)
            if self.cfg.scan_layers
            else (slot_segment, slot_position)
        )

        def layer_cache(keys, values):
            return LayerCache(keys, values, *seen, index)

        if self.cfg.scan_layers:
            graph, stacked = nnx.split(self.layers)

            def layer_step(x, xs):
                params, keys, values = xs
                layer = nnx.merge(graph, params)
                return layer(x, sin, cos, segments, positions, layer_cache(keys, values))

            x, (new_k, new_v) = jax.lax.scan(layer_step, x, (stacked, cache.k, cache.v))
            at = (0, 0, 0, index, 0)  # every layer's new keys/values, written once
            keys = constrain(
                jax.lax.dynamic_update_slice(cache.k, new_k, at), self.sharder, KV_AXES
            )
            values = constrain(
                jax.lax.dynamic_update_slice(cache.v, new_v, at), self.sharder, KV_AXES
            )
        else:
            if not isinstance(cache.k, tuple):
                raise ValueError(
                    "separate layers need a per-layer cache: init_cache(..., per_layer=True)"
                )
            keys, values = [], []
            for layer, layer_k, layer_v in zip(self.layers, cache.k, cache.v, strict=True):
                x, (layer_k, layer_v) = layer(
                    x, sin, cos, segments, positions, layer_cache(layer_k, layer_v)
                )
                keys.append(layer_k)
                values.append(layer_v)
            keys, values = tuple(keys), tuple(values)
        length = x.shape[1]
        return x, KVCache(keys, values, slot_segment, slot_position, index + length)

    def logits(self, hidden: jax.Array) -> jax.Array:
        dt = self.cfg.compute_dtype
        if self.cfg.tie_embeddings:
            weights = self.embed[...].astype(dt).T
        else:
            weights = self.lm_head[...].astype(dt)
        out = dense(hidden, weights, out_dtype=jnp.float32)
        return constrain(out, self.sharder, ("batch", "length", "act_vocab"))


def _stacked_layers(cfg: LlamaConfig, rngs: nnx.Rngs, sharder: Sharder | None) -> DecoderLayer:
    """num_layers independently initialised layers, stacked along a new leading "layers" axis."""

    @nnx.split_rngs(splits=cfg.num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def build(layer_rngs: nnx.Rngs) -> DecoderLayer:
        return DecoderLayer(cfg, layer_rngs, sharder)

    stack = build(rngs)
    for _, param in nnx.iter_graph(stack):
        if isinstance(param, nnx.Param):
            param.set_metadata(logical_axes=("layers", *param.get_metadata()["logical_axes"]))
    return stack


def logical_axes(state: nnx.State) -> nnx.State:
    """The `logical_axes` metadata of every parameter, as a tree shaped like `state`."""
    return jax.tree.map(
        lambda v: v.get_metadata()["logical_axes"],
        state,
        is_leaf=lambda x: isinstance(x, nnx.Variable),
    )
