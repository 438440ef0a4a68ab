"""Sharded model on 8 fake CPU devices (set up in conftest): numerics, placement, memory, checkpoints."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from tpu_train import checkpoint
from tpu_train.model import get_preset
from tpu_train.model.params import (
    canonical_abstract,
    canonical_params,
    init_model,
    model_from_params,
)
from tpu_train.sharding import Sharder, bytes_per_device, describe, make_mesh, resolve_mesh_shape

MESHES = {
    "fsdp8": {"fsdp": 8},
    "fsdp4_tensor2": {"fsdp": 4, "tensor": 2},
    "data2_fsdp2_tensor2": {"data": 2, "fsdp": 2, "tensor": 2},
}


def _cfg(**kw):
    return get_preset("tiny_gqa", **{"compute_dtype": "float32", **kw})


@pytest.fixture(scope="module")
def reference():
    model = init_model(_cfg(), seed=0)
    tokens = np.random.default_rng(0).integers(0, 512, (8, 32))
    return canonical_params(model), tokens, np.asarray(model(jnp.asarray(tokens)))


def test_eight_fake_devices():
    assert jax.device_count() == 8


@pytest.mark.parametrize("mesh_name", sorted(MESHES))
@pytest.mark.parametrize("attention", ["xla", "splash"])
def test_sharded_forward_equals_unsharded(reference, mesh_name, attention):
    params, tokens, expected = reference
    sharder = Sharder(make_mesh(MESHES[mesh_name]))
    cfg = _cfg(attention=attention, attention_interpret=True)
    length = 128 if attention == "splash" else tokens.shape[1]
    tokens = (
        np.random.default_rng(1).integers(0, 512, (8, length)) if attention == "splash" else tokens
    )
    if attention == "splash":
        expected = np.asarray(model_from_params(_cfg(), params)(jnp.asarray(tokens)))
    placed = jax.device_put(
        params, jax.tree.map(lambda s: s.sharding, canonical_abstract(cfg, sharder))
    )
    model = model_from_params(cfg, placed, sharder)
    batch_sharding = sharder.sharding(("batch", "length"), tokens.shape)
    logits = jax.jit(lambda m, t: m(t))(model, jax.device_put(jnp.asarray(tokens), batch_sharding))
    np.testing.assert_allclose(np.asarray(logits), expected, atol=1e-5, rtol=0)


def test_parameters_are_sharded_as_the_rules_say():
    sharder = Sharder(make_mesh({"fsdp": 4, "tensor": 2}))
    params = canonical_params(init_model(_cfg(), sharder))
    layers = params["layers"]

    def spec(x):  # jit drops trailing unsharded dimensions from specs; compare without them
        entries = list(x.sharding.spec)
        while entries and entries[-1] is None:
            entries.pop()
        return P(*entries)

    assert spec(layers["mlp"]["gate_proj"]) == P(None, "fsdp", "tensor")
    assert spec(layers["mlp"]["down_proj"]) == P(None, "tensor", "fsdp")
    assert spec(layers["attn"]["q_proj"]) == P(None, "fsdp", "tensor")
    assert spec(layers["attn"]["k_proj"]) == P(None, "fsdp", "tensor")  # 2 KV heads over tensor=2
    assert spec(layers["attn"]["o_proj"]) == P(None, "tensor", None, "fsdp")
    assert spec(params["embed"]) == P("tensor", "fsdp")
    assert spec(params["lm_head"]) == P("fsdp", "tensor")
    assert spec(params["final_norm"]["scale"]) == P()
    # Each device really holds only its shard.
    shard = layers["mlp"]["gate_proj"].addressable_shards[0].data
    assert shard.shape == (2, 64 // 4, 172 // 2)


def test_indivisible_dimension_is_replicated():
    sharder = Sharder(make_mesh({"fsdp": 2, "tensor": 4}))
    # 2 KV heads cannot be split 4 ways: that dimension stays whole, the rest is still sharded.
    assert sharder.spec(("embed", "kv_heads", "head_dim"), (64, 2, 16)) == P("fsdp", None, None)
    assert sharder.spec(("embed", "heads", "head_dim"), (64, 4, 16)) == P("fsdp", "tensor", None)


def test_fsdp_divides_parameter_memory():
    cfg = _cfg()
    whole = bytes_per_device(
        canonical_abstract(cfg, Sharder(make_mesh({"fsdp": 1}, jax.devices()[:1])))
    )
    sharded = bytes_per_device(canonical_abstract(cfg, Sharder(make_mesh({"fsdp": 8}))))
    assert whole == cfg.num_params() * 4
    assert sharded <= whole / 7  # only the tiny norm scales stay replicated
    assert "per device" in describe(
        make_mesh({"fsdp": 8}), canonical_abstract(cfg, Sharder(make_mesh({"fsdp": 8})))
    )


def test_mesh_shape_resolution_and_errors():
    assert resolve_mesh_shape({"data": 2, "fsdp": -1}, 8)["fsdp"] == 4
    with pytest.raises(ValueError, match="does not divide the 8 available devices"):
        resolve_mesh_shape({"data": 3, "fsdp": -1}, 8)
    with pytest.raises(ValueError, match="has 4 devices but 8 are available"):
        resolve_mesh_shape({"data": 2, "fsdp": 2}, 8)
    with pytest.raises(ValueError, match="only one mesh axis may be -1"):
        resolve_mesh_shape({"data": -1, "fsdp": -1}, 8)
    with pytest.raises(ValueError, match="not among"):
        resolve_mesh_shape({"pipeline": 8}, 8)


def test_checkpoint_restores_onto_a_different_mesh(tmp_path, reference):
    params, tokens, expected = reference
    cfg = _cfg()
    save_sharder = Sharder(make_mesh({"fsdp": 8}))
    saved = jax.device_put(
        params, jax.tree.map(lambda s: s.sharding, canonical_abstract(cfg, save_sharder))
    )
    checkpoint.save_params(tmp_path, 0, saved, cfg)
    assert checkpoint.read_model_config(tmp_path) == cfg

    restore_sharder = Sharder(make_mesh({"data": 2, "fsdp": 4}))
    target = canonical_abstract(cfg, restore_sharder)
    restored, step = checkpoint.restore_params(tmp_path, target)
    assert step == 0
    assert (
        restored["layers"]["mlp"]["up_proj"].sharding == target["layers"]["mlp"]["up_proj"].sharding
    )
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    logits = model_from_params(cfg, restored, restore_sharder)(jnp.asarray(tokens))
    np.testing.assert_allclose(np.asarray(logits), expected, atol=1e-5, rtol=0)
