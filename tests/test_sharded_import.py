"""Importing onto a sharded mesh reads each device's part of each tensor, never a whole tensor that is
split over devices (`hf_weights.Layout.read`), and gives exactly the unsharded import."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from tpu_train.interop import hf_weights
from tpu_train.interop.hf import HfDirectory, load_params
from tpu_train.model.config import LlamaConfig
from tpu_train.sharding import Sharder, make_mesh


@pytest.mark.parametrize(
    "layout, hf_shape, ours_shape",
    [
        (
            hf_weights.Layout((2, 1), (2, 0, 1)),
            (4 * 6, 10),
            (10, 4, 6),
        ),  # q/k/v: [n*D, E] -> [E, n, D]
        (hf_weights.Layout((1, 2), (1, 2, 0)), (10, 4 * 6), (4, 6, 10)),  # o: [E, H*D] -> [H, D, E]
        (hf_weights.Layout((1, 1), (1, 0)), (7, 10), (10, 7)),  # MLP: transpose
    ],
)
def test_a_part_of_our_array_reads_only_that_part_of_the_hf_tensor(layout, hf_shape, ours_shape):
    rng = np.random.default_rng(0)
    hf = rng.normal(size=hf_shape).astype(np.float32)
    whole = layout.read(lambda index: hf[index], ours_shape, ())
    assert whole.shape == ours_shape
    np.testing.assert_array_equal(layout.to_hf(whole), hf)
    for _ in range(20):
        index = []
        for n in ours_shape:
            lo = int(rng.integers(0, n))
            index.append(slice(lo, int(rng.integers(lo + 1, n + 1))))
        index = tuple(index)
        asked: list[int] = []
        part = layout.read(lambda i, a=asked: (a.append(hf[i].size), hf[i])[1], ours_shape, index)
        np.testing.assert_array_equal(part, whole[index])
        # Read: the part itself, but whole along a split's inner axes (head_dim, which no rule shards).
        inner, at = set(), 0
        for n in layout.groups:
            inner |= set(range(at + 1, at + n))
            at += n
        expected = np.prod(
            [
                n if layout.perm[j] in inner else s.stop - s.start
                for j, (n, s) in enumerate(zip(ours_shape, index, strict=True))
            ]
        )
        assert asked == [expected]


def test_sharded_import_reads_device_parts_and_equals_the_plain_import(hf_llama_factory):
    hf_dir, _ = hf_llama_factory(num_key_value_heads=2, tie_word_embeddings=False)
    source = HfDirectory(hf_dir)
    cfg: LlamaConfig = source.config(compute_dtype="float32")
    plain = jax.device_get(load_params(source, cfg))

    reads: list[tuple[str, int]] = []
    read = source.read

    def counted(name: str, index: tuple[slice, ...] = ()) -> np.ndarray:
        part = read(name, index)
        reads.append((name, part.size))
        return part

    source.read = counted
    sharder = Sharder(make_mesh({"fsdp": 2, "tensor": 4}))
    sharded = load_params(source, cfg, sharder)

    for path, leaf in jax.tree_util.tree_flatten_with_path(sharded)[0]:
        assert len(leaf.sharding.device_set) == 8, path
    np.testing.assert_equal(jax.device_get(sharded), plain)
    shapes = source.shapes()
    # Every tensor that the mesh splits is read in parts: q_proj [H*D, E] is split 4 ways over heads
    # (tensor) and 2 over E (fsdp), so each read is an eighth of it; replicas share one read.
    q = "model.layers.0.self_attn.q_proj.weight"
    q_reads = [size for name, size in reads if name == q]
    assert q_reads == [np.prod(shapes[q]) // 8] * 8
    for name, size in reads:
        if not name.endswith("norm.weight"):  # norms are replicated: read whole, once
            assert size < np.prod(shapes[name]), name
