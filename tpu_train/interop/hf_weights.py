"""Hugging Face Llama tensors <-> tpu_train parameters.

tpu_train keeps parameters in one canonical tree (layers stacked on a leading axis, as `scan_layers` uses
them). Because RoPE uses the Hugging Face rotate-half layout, every conversion is a transpose and a reshape:

    HF name                                   HF shape        tpu_train path                 shape
    model.embed_tokens.weight                 [V, E]          embed                          [V, E]
    model.layers.{i}.self_attn.q_proj.weight  [H*D, E]        layers.attn.q_proj[i]          [E, H, D]
    model.layers.{i}.self_attn.k_proj.weight  [K*D, E]        layers.attn.k_proj[i]          [E, K, D]
    model.layers.{i}.self_attn.v_proj.weight  [K*D, E]        layers.attn.v_proj[i]          [E, K, D]
    model.layers.{i}.self_attn.o_proj.weight  [E, H*D]        layers.attn.o_proj[i]          [H, D, E]
    model.layers.{i}.mlp.gate_proj.weight     [F, E]          layers.mlp.gate_proj[i]        [E, F]
    model.layers.{i}.mlp.up_proj.weight       [F, E]          layers.mlp.up_proj[i]          [E, F]
    model.layers.{i}.mlp.down_proj.weight     [E, F]          layers.mlp.down_proj[i]        [F, E]
    model.layers.{i}.input_layernorm.weight   [E]             layers.attn_norm.scale[i]      [E]
    model.layers.{i}.post_attention_layernorm [E]             layers.mlp_norm.scale[i]       [E]
    model.norm.weight                         [E]             final_norm.scale               [E]
    lm_head.weight                            [V, E]          lm_head                        [E, V]  (untied)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

import numpy as np

from tpu_train.interop.hf_config import UnsupportedCheckpointError
from tpu_train.model.config import LlamaConfig

# Buffers some transformers versions saved, that carry no parameters.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


@dataclasses.dataclass(frozen=True)
class TensorMapping:
    """One parameter: its path in the tpu_train tree, its HF name (with `{i}` for per-layer tensors) and the
    two layout conversions, written for one layer."""

    path: tuple[str, ...]
    hf_name: str
    to_ours: Callable[[np.ndarray], np.ndarray]
    to_hf: Callable[[np.ndarray], np.ndarray]

    @property
    def per_layer(self) -> bool:
        return "{i}" in self.hf_name


def mappings(cfg: LlamaConfig) -> list[TensorMapping]:
    e, h, k, d = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim

    def heads_in(n: int) -> tuple[Callable, Callable]:  # HF [n*D, E] <-> ours [E, n, D]
        return (lambda w: w.T.reshape(e, n, d)), (lambda w: w.reshape(e, n * d).T)

    def out_heads() -> tuple[Callable, Callable]:  # HF [E, H*D] <-> ours [H, D, E]
        return (lambda w: w.T.reshape(h, d, e)), (lambda w: w.reshape(h * d, e).T)

    transpose = (np.transpose, np.transpose)
    same = (lambda w: w, lambda w: w)
    layer = "model.layers.{i}."
    table = [
        (("embed",), "model.embed_tokens.weight", same),
        (("layers", "attn", "q_proj"), layer + "self_attn.q_proj.weight", heads_in(h)),
        (("layers", "attn", "k_proj"), layer + "self_attn.k_proj.weight", heads_in(k)),
        (("layers", "attn", "v_proj"), layer + "self_attn.v_proj.weight", heads_in(k)),
        (("layers", "attn", "o_proj"), layer + "self_attn.o_proj.weight", out_heads()),
        (("layers", "mlp", "gate_proj"), layer + "mlp.gate_proj.weight", transpose),
        (("layers", "mlp", "up_proj"), layer + "mlp.up_proj.weight", transpose),
        (("layers", "mlp", "down_proj"), layer + "mlp.down_proj.weight", transpose),
        (("layers", "attn_norm", "scale"), layer + "input_layernorm.weight", same),
        (("layers", "mlp_norm", "scale"), layer + "post_attention_layernorm.weight", same),
        (("final_norm", "scale"), "model.norm.weight", same),
    ]
    if not cfg.tie_embeddings:
        table.append((("lm_head",), "lm_head.weight", transpose))
    return [TensorMapping(path, name, *conv) for path, name, conv in table]


def hf_shape(m: TensorMapping, ours_shape: tuple[int, ...]) -> tuple[int, ...]:
    """HF shape of one layer's tensor, given the shape of our (unstacked) parameter."""
    return m.to_hf(np.empty(ours_shape, np.uint8)).shape


def load_params(
    get_tensor: Callable[[str], np.ndarray],
    names: set[str],
    cfg: LlamaConfig,
    shapes: dict[tuple[str, ...], tuple[int, ...]],
    place: Callable[[tuple[str, ...], np.ndarray], object],
) -> dict:
    """Builds the canonical parameter tree from HF tensors.

    Args:
      get_tensor: HF name -> array (e.g. `CheckpointReader.get`).
      names: every tensor name in the checkpoint, to report unexpected ones.
      cfg: the model configuration read from the same checkpoint.
      shapes: expected *stacked* shape of each parameter path.
      place: turns a finished host array into its final form (e.g. a sharded `jax.Array`); called once
        per parameter so only one stacked parameter lives on the host at a time.
    """
    table = mappings(cfg)
    expected = {
        m.hf_name.format(i=i)
        for m in table
        for i in (range(cfg.num_layers) if m.per_layer else [0])
    }
    unexpected = sorted(n for n in names - expected if not n.endswith(_IGNORED_SUFFIXES))
    if unexpected:
        raise UnsupportedCheckpointError(
            f"checkpoint has tensors a Llama of this config does not: {', '.join(unexpected[:5])}"
            + (f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else "")
        )
    tree: dict = {}
    for m in table:
        shape = shapes[m.path]
        layers = range(cfg.num_layers) if m.per_layer else [None]
        one_shape = shape[1:] if m.per_layer else shape
        out = np.empty(shape, dtype=np.float32)
        for i in layers:
            name = m.hf_name.format(i=i)
            tensor = get_tensor(name)
            want = hf_shape(m, one_shape)
            if tensor.shape != want:
                raise UnsupportedCheckpointError(
                    f"tensor {name!r} has shape {list(tensor.shape)}, expected {list(want)} for this config"
                )
            value = m.to_ours(np.asarray(tensor, dtype=np.float32))
            if i is None:
                out = value
            else:
                out[i] = value
        _set(tree, m.path, place(m.path, out))
    return tree


def iter_hf_tensors(
    params: dict, cfg: LlamaConfig, fetch: Callable[[object], np.ndarray]
) -> Iterator[tuple[str, tuple[int, ...], Callable[[], np.ndarray]]]:
    """Yields (HF name, HF shape, thunk) for every tensor, in HF order, without touching values yet.

    `fetch(x)` turns one of our (possibly sharded, on-device) arrays or slices into a host array.
    """
    table = mappings(cfg)
    for m in table:
        if not m.per_layer:
            leaf = _get(params, m.path)
            yield (
                m.hf_name,
                hf_shape(m, tuple(leaf.shape)),
                (lambda m=m, leaf=leaf: m.to_hf(fetch(leaf))),
            )
    for i in range(cfg.num_layers):
        for m in table:
            if m.per_layer:
                leaf = _get(params, m.path)
                yield (
                    m.hf_name.format(i=i),
                    hf_shape(m, tuple(leaf.shape[1:])),
                    lambda m=m, leaf=leaf, i=i: m.to_hf(fetch(leaf[i])),
                )


def _get(tree: dict, path: tuple[str, ...]):
    for key in path:
        tree = tree[key]
    return tree


def _set(tree: dict, path: tuple[str, ...], value: object) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value
