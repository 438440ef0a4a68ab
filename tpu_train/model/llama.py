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

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from tpu_train.model import rope
from tpu_train.model.attention import splash_attention, xla_attention
from tpu_train.model.config import LlamaConfig
from tpu_train.model.dense import dense
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


class Attention(nnx.Module):
    def __init__(self, cfg: LlamaConfig, rngs: nnx.Rngs, sharder: Sharder | None):
        e, h, k, d = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        p = cfg.param_dtype
        self.cfg, self.sharder = cfg, sharder
        self.q_proj = _param(rngs, (e, h, d), ("embed", "heads", "head_dim"), p)
        self.k_proj = _param(rngs, (e, k, d), ("embed", "kv_heads", "head_dim"), p)
        self.v_proj = _param(rngs, (e, k, d), ("embed", "kv_heads", "head_dim"), p)
        self.o_proj = _param(rngs, (h, d, e), ("heads", "head_dim", "embed"), p)

    def __call__(
        self,
        x: jax.Array,
        sin: jax.Array,
        cos: jax.Array,
        segment_ids: jax.Array,
        positions: jax.Array,
    ) -> jax.Array:
        cfg, dt = self.cfg, self.cfg.compute_dtype
        q = dense(x, self.q_proj[...].astype(dt))  # [B, L, H, D]
        k = dense(x, self.k_proj[...].astype(dt))  # [B, L, K, D]
        v = dense(x, self.v_proj[...].astype(dt))
        q = constrain(q, self.sharder, ("batch", "length", "act_heads", "head_dim"))
        k = constrain(k, self.sharder, ("batch", "length", "act_kv_heads", "head_dim"))
        v = constrain(v, self.sharder, ("batch", "length", "act_kv_heads", "head_dim"))
        q = rope.apply_rope(q, sin, cos) * jnp.asarray(cfg.head_dim**-0.5, dt)
        k = rope.apply_rope(k, sin, cos)
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
        return dense(out, self.o_proj[...].astype(dt), contract=2)


class MLP(nnx.Module):
    """SwiGLU: down(silu(x @ gate) * (x @ up))."""

    def __init__(self, cfg: LlamaConfig, rngs: nnx.Rngs, sharder: Sharder | None):
        e, f, p = cfg.hidden_size, cfg.intermediate_size, cfg.param_dtype
        self.dtype, self.sharder = cfg.compute_dtype, sharder
        self.gate_proj = _param(rngs, (e, f), ("embed", "mlp"), p)
        self.up_proj = _param(rngs, (e, f), ("embed", "mlp"), p)
        self.down_proj = _param(rngs, (f, e), ("mlp", "embed"), p)

    def __call__(self, x: jax.Array) -> jax.Array:
        dt = self.dtype
        hidden = jax.nn.silu(dense(x, self.gate_proj[...].astype(dt))) * dense(
            x, self.up_proj[...].astype(dt)
        )
        hidden = constrain(hidden, self.sharder, ("batch", "length", "act_mlp"))
        return dense(hidden, self.down_proj[...].astype(dt))


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
    ) -> jax.Array:
        x = x + self.attn(self.attn_norm(x), sin, cos, segment_ids, positions)
        x = x + self.mlp(self.mlp_norm(x))
        return constrain(x, self.sharder, ("batch", "length", "act_embed"))


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
    ) -> jax.Array:  # [B, L, vocab] float32 logits
        return self.logits(self.hidden_states(tokens, positions, segment_ids))

    def hidden_states(
        self,
        tokens: jax.Array,
        positions: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
    ) -> jax.Array:  # [B, L, hidden] in compute dtype, after the final norm
        cfg = self.cfg
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
        if segment_ids is None:
            segment_ids = jnp.ones_like(tokens)
        x = jnp.take(self.embed[...], tokens, axis=0).astype(cfg.compute_dtype)
        x = constrain(x, self.sharder, ("batch", "length", "act_embed"))
        inv_freq = rope.inverse_frequencies(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
        sin, cos = rope.sin_cos(positions, inv_freq)
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
