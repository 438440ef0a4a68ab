"""LoRA (Hu et al., 2021) and QLoRA (Dettmers et al., 2023) on the model's weight matmuls.

A projection W [*in, *out] named in `LlamaConfig.lora.targets` gets two adapter parameters beside it:

    <name>_lora_a [*in, r]   uniform in +-1/sqrt(fan_in) (PEFT's kaiming-uniform with a = sqrt(5))
    <name>_lora_b [r, *out]  zeros, so that step 0 computes exactly the base model

    y = x W + (alpha / r) (x A) B

Adapters carry the logical axes of the dims they share with W (and "lora_rank", replicated), so they are
sharded like the weight they adapt. Training differentiates the adapters only (`split` / `combine` separate
them from the frozen base): the base gets no weight gradient and no optimizer state.

QLoRA (`quantize_base`: int8 or nf4) holds the frozen projections as qwix `QArray`s, in blocks of 64
along the last contracted dim; `weight()` dequantizes each one where it is used, inside the layer scan,
so only one layer's weights are ever whole in the compute dtype.

Sampling, evaluation and export use `merge`: W + (alpha / r) A B as one plain parameter tree, the model
transformers loads without PEFT.

Why not qwix's own LoRA provider: it intercepts `dot_general`/`einsum` calls inside module methods and
creates its adapters lazily on a first call, while this model is rebuilt from a parameter tree at every
step and runs its matmuls through `dense()`'s custom backward; an adapter written beside the weight it
adapts, in the one function every projection goes through, keeps a single forward pass.

Example:
    >>> from tpu_train.model.config import LoraConfig, get_preset
    >>> from tpu_train.model.params import canonical_params, init_model
    >>> cfg = get_preset("tiny", lora=LoraConfig(rank=4, targets=("q_proj", "down_proj")))
    >>> base, adapters = split(canonical_params(init_model(cfg)))
    >>> sorted(adapters["layers"]["attn"]), adapters["layers"]["attn"]["q_proj_lora_a"].shape
    (['q_proj_lora_a', 'q_proj_lora_b'], (2, 64, 4))
    >>> "q_proj" in base["layers"]["attn"], "q_proj_lora_a" in base["layers"]["attn"]
    (True, False)
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import qwix
from flax import nnx

from tpu_train.model.config import LlamaConfig, LoraConfig
from tpu_train.model.dense import dense

ADAPTER_SUFFIXES = ("_lora_a", "_lora_b")
# How many leading dims of each projection are contracted with the input (o_proj: heads x head_dim).
CONTRACTED_DIMS = {
    "q_proj": 1,
    "k_proj": 1,
    "v_proj": 1,
    "o_proj": 2,
    "gate_proj": 1,
    "up_proj": 1,
    "down_proj": 1,
}
QUANT_BLOCK = 64  # QLoRA's block size along the contracted dim


def is_adapter(name: str) -> bool:
    return str(name).endswith(ADAPTER_SUFFIXES)


def add_adapters(module: nnx.Module, cfg: LlamaConfig, rngs: nnx.Rngs, name: str) -> None:
    """Creates `<name>_lora_a` / `<name>_lora_b` on `module` if the config's LoRA targets `name`."""
    if cfg.lora is None or name not in cfg.lora.targets:
        return
    weight = getattr(module, name)
    axes = weight.get_metadata()["logical_axes"]
    n_in = CONTRACTED_DIMS[name]
    in_shape, out_shape = weight.shape[:n_in], weight.shape[n_in:]
    rank, bound = cfg.lora.rank, 1.0 / math.sqrt(math.prod(in_shape))
    a = jax.random.uniform(
        rngs.params(), (*in_shape, rank), cfg.param_dtype, minval=-bound, maxval=bound
    )
    setattr(module, name + "_lora_a", nnx.Param(a, logical_axes=(*axes[:n_in], "lora_rank")))
    b = jnp.zeros((rank, *out_shape), cfg.param_dtype)
    setattr(module, name + "_lora_b", nnx.Param(b, logical_axes=("lora_rank", *axes[n_in:])))


def weight(value: jax.Array | qwix.QArray, dtype: Any) -> jax.Array:
    """A weight in the compute dtype; a quantized (QLoRA) base weight is dequantized first."""
    if isinstance(value, qwix.QArray):
        value = qwix.dequantize(value)
    return value.astype(dtype)


def project(module: nnx.Module, name: str, x: jax.Array) -> jax.Array:
    """x through the projection `name` of `module`, plus its adapter where it has one."""
    cfg = module.cfg
    dt, contract = cfg.compute_dtype, CONTRACTED_DIMS[name]
    y = dense(x, weight(getattr(module, name).get_value(), dt), contract=contract)
    if not hasattr(module, name + "_lora_a"):
        return y
    a = getattr(module, name + "_lora_a")[...].astype(dt)
    b = getattr(module, name + "_lora_b")[...].astype(dt)
    low = dense(x, a, contract=contract)  # [..., r]
    return y + dense(low, b) * jnp.asarray(cfg.lora.scale, dt)


def _partition(tree: dict, keep) -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            sub = _partition(value, keep)
            if sub:
                out[key] = sub
        elif keep(key):
            out[key] = value
    return out


def split(params: dict) -> tuple[dict, dict]:
    """(base, adapters): the canonical tree without its adapters, and the adapters alone."""
    return _partition(params, lambda k: not is_adapter(k)), _partition(params, is_adapter)


def combine(base: dict, adapters: dict) -> dict:
    """The inverse of `split`: one tree holding both."""
    out = dict(base)
    for key, value in adapters.items():
        out[key] = combine(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def _delta(a: jax.Array, b: jax.Array, stacked: bool) -> jax.Array:
    """A B: [*in, r] x [r, *out] -> [*in, *out] (per layer when stacked)."""
    contract = lambda a, b: jnp.tensordot(a, b, axes=1)  # noqa: E731
    return jax.vmap(contract)(a, b) if stacked else contract(a, b)


def merge(params: dict, lora: LoraConfig) -> dict:
    """The plain parameter tree of a LoRA model: every adapted W replaced by W + (alpha / r) A B in
    W's dtype, quantized weights dequantized, adapters removed. Canonical (layers-stacked) layout."""
    base, adapters = split(params)
    base = jax.tree.map(
        lambda v: qwix.dequantize(v) if isinstance(v, qwix.QArray) else v,
        base,
        is_leaf=lambda v: isinstance(v, qwix.QArray),
    )

    def merged(tree: dict, adapted: dict, stacked: bool) -> dict:
        out = dict(tree)
        for key, value in tree.items():
            if isinstance(value, dict):
                sub = adapted.get(key, {})
                out[key] = merged(value, sub, stacked or key == "layers")
            elif key + "_lora_a" in adapted:
                a, b = adapted[key + "_lora_a"], adapted[key + "_lora_b"]
                delta = _delta(a.astype(jnp.float32), b.astype(jnp.float32), stacked)
                out[key] = (value.astype(jnp.float32) + lora.scale * delta).astype(value.dtype)
        return out

    return merged(base, adapters, False)


def quantize_base(base: dict, lora: LoraConfig) -> dict:
    """QLoRA: the projection weights of a (canonical, layers-stacked) base tree as qwix QArrays, in
    blocks of QUANT_BLOCK along the last contracted dim (the whole dim where it does not divide) with
    a float32 scale per block and output channel; other parameters as they are."""
    if lora.quantize_base == "none":
        return base
    qtype = {"int8": jnp.int8, "nf4": "nf4"}[lora.quantize_base]

    def quantize(name: str, w: jax.Array) -> qwix.QArray:
        last_in = CONTRACTED_DIMS[name]  # axis 0 is the layers axis
        block = QUANT_BLOCK if w.shape[last_in] % QUANT_BLOCK == 0 else 1.0
        channels = tuple(axis for axis in range(w.ndim) if axis != last_in)
        return qwix.quantize(
            w,
            qtype,
            channelwise_axes=channels,
            tiled_axes={last_in: block},
            scale_dtype=jnp.float32,
        )

    layers = {
        group: {
            key: quantize(key, value) if key in CONTRACTED_DIMS else value
            for key, value in modules.items()
        }
        for group, modules in base["layers"].items()
    }
    return {**base, "layers": layers}


def plain_model(params: dict, cfg: LlamaConfig) -> tuple[dict, LlamaConfig]:
    """(parameters, config) of the plain model a LoRA model computes: `merge`d, without `lora`. A model
    without LoRA is returned as it is."""
    if cfg.lora is None:
        return params, cfg
    return merge(params, cfg.lora), cfg.replace(lora=None)
