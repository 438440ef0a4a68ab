"""Creating, sharding and exchanging the model's parameters.

Parameters travel between components (checkpoints, Hugging Face import/export, training) as one *canonical*
pure-dict tree with the layers stacked on a leading axis: the layout `scan_layers=True` uses. A model built
with `scan_layers=False` is converted on the way in and out, so a checkpoint does not depend on how the
layers are run.

Example:
    >>> from tpu_train.model.config import get_preset
    >>> cfg = get_preset("tiny", scan_layers=False)
    >>> model = init_model(cfg, seed=0)
    >>> params = canonical_params(model)
    >>> params["layers"]["mlp"]["up_proj"].shape   # [layers, embed, mlp]
    (2, 64, 172)
"""

from __future__ import annotations

import functools

import jax
import numpy as np
from flax import nnx

from tpu_train.model import lora
from tpu_train.model.config import LlamaConfig
from tpu_train.model.llama import Llama, logical_axes
from tpu_train.sharding import Sharder


def _abstract(
    cfg: LlamaConfig, sharder: Sharder | None, seed: int = 0
) -> tuple[nnx.GraphDef, nnx.State]:
    abstract = nnx.eval_shape(lambda: Llama(cfg, rngs=nnx.Rngs(seed), sharder=sharder))
    return nnx.split(abstract)


def _variable_shardings(state: nnx.State, sharder: Sharder) -> nnx.State:
    return jax.tree.map(
        lambda v: v.replace(sharder.sharding(v.get_metadata()["logical_axes"], v.shape)),
        state,
        is_leaf=lambda x: isinstance(x, nnx.Variable),
    )


def init_model(cfg: LlamaConfig, sharder: Sharder | None = None, seed: int = 0) -> Llama:
    """A randomly initialised model whose parameters are created already sharded (never whole on one
    device), as `sharder`'s rules say."""
    if sharder is None:
        return Llama(cfg, rngs=nnx.Rngs(seed))
    graphdef, state = _abstract(cfg, sharder, seed)

    @jax.jit
    def create() -> nnx.State:
        s = nnx.state(Llama(cfg, rngs=nnx.Rngs(seed), sharder=sharder))
        return jax.lax.with_sharding_constraint(s, _variable_shardings(state, sharder))

    return nnx.merge(graphdef, create())


def canonical_abstract(cfg: LlamaConfig, sharder: Sharder | None) -> dict:
    """The canonical tree as `jax.ShapeDtypeStruct`s carrying their target shardings (without a sharder:
    the first local device, so a checkpoint from any mesh restores onto one device)."""
    _, state = _abstract(cfg.replace(scan_layers=True), sharder)
    axes = nnx.to_pure_dict(logical_axes(state))
    shapes = nnx.to_pure_dict(state)

    def spec(leaf, names):
        if sharder is not None:
            sharding = sharder.sharding(names, leaf.shape)
        else:
            sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding)

    return jax.tree.map(spec, shapes, axes, is_leaf=lambda x: isinstance(x, tuple))


def adapter_abstract(cfg: LlamaConfig, sharder: Sharder | None) -> dict:
    """The LoRA adapters' part of `canonical_abstract` (cfg.lora must be set)."""
    return lora.split(canonical_abstract(cfg, sharder))[1]


def init_adapters(cfg: LlamaConfig, sharder: Sharder | None = None, seed: int = 0) -> dict:
    """Freshly initialised LoRA adapters (A random, B = 0) in the canonical layout, created sharded.
    The whole model is built inside one jit and only the adapters are returned, so XLA drops the base
    weights' initialisation: a 7B base is never materialised for it."""
    cfg = cfg.replace(scan_layers=True)
    target = adapter_abstract(cfg, sharder)

    @functools.partial(jax.jit, out_shardings=jax.tree.map(lambda a: a.sharding, target))
    def create() -> dict:
        return lora.split(canonical_params(Llama(cfg, rngs=nnx.Rngs(seed), sharder=sharder)))[1]

    return create()


def canonical_params(model: Llama) -> dict:
    """The model's parameters as the canonical (layers-stacked) pure dict."""
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    if not model.cfg.scan_layers:
        layers = [params["layers"][i] for i in range(model.cfg.num_layers)]
        params["layers"] = jax.tree.map(lambda *xs: jax.numpy.stack(xs), *layers)
    return params


def model_from_params(cfg: LlamaConfig, params: dict, sharder: Sharder | None = None) -> Llama:
    """A model holding `params` (canonical layout), converted to `cfg.scan_layers`'s layout."""
    graphdef, state = _abstract(cfg, sharder)
    if not cfg.scan_layers:
        stacked = params["layers"]
        params = {
            **params,
            "layers": {
                i: jax.tree.map(lambda x, i=i: x[i], stacked) for i in range(cfg.num_layers)
            },
        }
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(graphdef, state)


def host_array(x: jax.Array | np.ndarray) -> np.ndarray:
    """Gathers one (possibly sharded) array to the host."""
    return np.asarray(jax.device_get(x))
