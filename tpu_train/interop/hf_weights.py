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
import math
from collections.abc import Callable, Iterator, Mapping

import numpy as np

from tpu_train.interop.hf_config import UnsupportedCheckpointError
from tpu_train.model.config import LlamaConfig

# Buffers some transformers versions saved, that carry no parameters.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


Index = tuple[slice, ...]  # one device's part of an array, as jax.make_array_from_callback gives it
# (HF name, HF index) -> that part of the HF tensor, float32: what an import source reads.
ReadTensor = Callable[[str, Index], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Layout:
    """How one layer's HF tensor becomes ours: HF axis i is split into `groups[i]` axes (the first one
    outer), and the split axes are transposed by `perm`. E.g. q_proj, HF [H*D, E] -> ours [E, H, D]:
    groups (2, 1) split it into [H, D, E], perm (2, 0, 1) makes it [E, H, D]. Because the outer axis of
    a split is the one our shardings cut (heads, not head_dim), a device's slice of our array is a
    contiguous range of HF rows and columns: `read` fetches only that."""

    groups: tuple[int, ...]
    perm: tuple[int, ...]

    def split_shape(self, ours: tuple[int, ...]) -> list[int]:
        split = [0] * len(ours)
        for j, axis in enumerate(self.perm):
            split[axis] = ours[j]
        return split

    def hf_shape(self, ours: tuple[int, ...]) -> tuple[int, ...]:
        split, shape, at = self.split_shape(ours), [], 0
        for n in self.groups:
            shape.append(math.prod(split[at : at + n]))
            at += n
        return tuple(shape)

    def to_hf(self, x: np.ndarray) -> np.ndarray:
        return x.transpose(np.argsort(self.perm)).reshape(self.hf_shape(x.shape))

    def read(self, read_hf: Callable[[Index], np.ndarray], ours: tuple[int, ...], index: Index):
        """Our array's part `index` (of full shape `ours`), from the HF tensor read through `read_hf`."""
        index = full_index(index, ours)
        split, split_index = self.split_shape(ours), [slice(0)] * len(ours)
        for j, axis in enumerate(self.perm):
            split_index[axis] = index[j]
        hf_index, local_shape, local_index, at = [], [], [], 0
        for n in self.groups:
            outer, inner = split_index[at], split[at + 1 : at + n]
            rows = math.prod(inner)
            hf_index.append(slice(outer.start * rows, outer.stop * rows))
            local_shape += [outer.stop - outer.start, *inner]
            local_index += [slice(None), *split_index[at + 1 : at + n]]
            at += n
        block = np.asarray(read_hf(tuple(hf_index)), np.float32).reshape(local_shape)
        return block[tuple(local_index)].transpose(self.perm)


def full_index(index: Index, shape: tuple[int, ...]) -> Index:
    """`index` with every axis a slice of explicit bounds (step 1), missing axes whole."""
    index = tuple(index) + (slice(None),) * (len(shape) - len(index))
    out = []
    for s, n in zip(index, shape, strict=True):
        start, stop, step = s.indices(n)
        if step != 1:
            raise ValueError(f"index {index}: only contiguous slices are read")
        out.append(slice(start, stop))
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class TensorMapping:
    """One parameter: its path in the tpu_train tree, its HF name (with `{i}` for per-layer tensors) and
    the layout conversion, written for one layer."""

    path: tuple[str, ...]
    hf_name: str
    layout: Layout

    @property
    def per_layer(self) -> bool:
        return "{i}" in self.hf_name

    def to_hf(self, x: np.ndarray) -> np.ndarray:
        return self.layout.to_hf(x)

    def read(self, read_tensor: ReadTensor, shape: tuple[int, ...], index: Index) -> np.ndarray:
        """Part `index` of our (stacked, for per-layer tensors) parameter of shape `shape`."""
        if not self.per_layer:
            return self.layout.read(lambda i: read_tensor(self.hf_name, i), shape, index)
        index = full_index(index, shape)
        layers = range(index[0].start, index[0].stop)
        return np.stack(
            [
                self.layout.read(
                    lambda i, layer=layer: read_tensor(self.hf_name.format(i=layer), i),
                    shape[1:],
                    index[1:],
                )
                for layer in layers
            ]
        )


def mappings(cfg: LlamaConfig) -> list[TensorMapping]:
    heads_in = Layout(groups=(2, 1), perm=(2, 0, 1))  # HF [n*D, E] <-> ours [E, n, D]
    out_heads = Layout(groups=(1, 2), perm=(1, 2, 0))  # HF [E, H*D] <-> ours [H, D, E]
    transpose = Layout(groups=(1, 1), perm=(1, 0))
    same_1d, same_2d = Layout((1,), (0,)), Layout((1, 1), (0, 1))
    layer = "model.layers.{i}."
    table = [
        (("embed",), "model.embed_tokens.weight", same_2d),
        (("layers", "attn", "q_proj"), layer + "self_attn.q_proj.weight", heads_in),
        (("layers", "attn", "k_proj"), layer + "self_attn.k_proj.weight", heads_in),
        (("layers", "attn", "v_proj"), layer + "self_attn.v_proj.weight", heads_in),
        (("layers", "attn", "o_proj"), layer + "self_attn.o_proj.weight", out_heads),
        (("layers", "mlp", "gate_proj"), layer + "mlp.gate_proj.weight", transpose),
        (("layers", "mlp", "up_proj"), layer + "mlp.up_proj.weight", transpose),
        (("layers", "mlp", "down_proj"), layer + "mlp.down_proj.weight", transpose),
        (("layers", "attn_norm", "scale"), layer + "input_layernorm.weight", same_1d),
        (("layers", "mlp_norm", "scale"), layer + "post_attention_layernorm.weight", same_1d),
        (("final_norm", "scale"), "model.norm.weight", same_1d),
    ]
    if not cfg.tie_embeddings:
        table.append((("lm_head",), "lm_head.weight", transpose))
    return [TensorMapping(path, name, layout) for path, name, layout in table]


def hf_shape(m: TensorMapping, ours_shape: tuple[int, ...]) -> tuple[int, ...]:
    """HF shape of one layer's tensor, given the shape of our (unstacked) parameter."""
    return m.layout.hf_shape(ours_shape)


def load_params(
    read_tensor: ReadTensor,
    hf_shapes: Mapping[str, tuple[int, ...]],
    cfg: LlamaConfig,
    shapes: Mapping[tuple[str, ...], tuple[int, ...]],
    place: Callable[[tuple[str, ...], tuple[int, ...], Callable[[Index], np.ndarray]], object],
) -> dict:
    """Builds the canonical parameter tree from HF tensors, each device reading only its own part.

    Args:
      read_tensor: (HF name, index) -> that part of the tensor, float32 (an import source's `read`).
      hf_shapes: the shape of every tensor in the checkpoint: checked against the config before
        anything is read, and unexpected names reported.
      cfg: the model configuration read from the same checkpoint.
      shapes: expected *stacked* shape of each parameter path.
      place: (path, shape, read_part) -> the final array, where `read_part(index)` returns part `index`
        of the parameter (e.g. `jax.make_array_from_callback(shape, sharding, read_part)`).
    """
    table = mappings(cfg)
    expected = {}
    for m in table:
        one_shape = shapes[m.path][1:] if m.per_layer else shapes[m.path]
        for i in range(cfg.num_layers) if m.per_layer else [0]:
            expected[m.hf_name.format(i=i)] = hf_shape(m, one_shape)
    unexpected = sorted(
        n for n in set(hf_shapes) - set(expected) if not n.endswith(_IGNORED_SUFFIXES)
    )
    if unexpected:
        raise UnsupportedCheckpointError(
            f"checkpoint has tensors a Llama of this config does not: {', '.join(unexpected[:5])}"
            + (f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else "")
        )
    for name, want in expected.items():
        if name not in hf_shapes:
            raise KeyError(f"tensor {name!r} is missing from the checkpoint")
        if tuple(hf_shapes[name]) != want:
            raise UnsupportedCheckpointError(
                f"tensor {name!r} has shape {list(hf_shapes[name])}, expected {list(want)} for this "
                "config"
            )
    tree: dict = {}
    for m in table:
        shape = tuple(shapes[m.path])
        _set(
            tree,
            m.path,
            place(m.path, shape, lambda index, m=m, shape=shape: m.read(read_tensor, shape, index)),
        )
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
