"""Model behaviours that need no reference implementation: packing, scan vs loop, remat, splash kernel."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tpu_train.model import get_preset
from tpu_train.model.attention import splash_attention, xla_attention
from tpu_train.model.params import canonical_params, init_model, model_from_params


def _cfg(**kw):
    return get_preset("tiny_gqa", **{"compute_dtype": "float32", **kw})


def test_packed_sequences_do_not_attend_across_segments():
    model = init_model(_cfg(), seed=1)
    rng = np.random.default_rng(0)
    a, b = rng.integers(1, 512, 11), rng.integers(1, 512, 7)
    packed = np.concatenate([a, b, np.zeros(2, np.int64)])[None]  # two examples + 2 pad tokens
    segments = np.array([[1] * 11 + [2] * 7 + [0] * 2])
    positions = np.array([list(range(11)) + list(range(7)) + [0, 1]])
    logits = model(jnp.asarray(packed), jnp.asarray(positions), jnp.asarray(segments))
    alone_a = model(jnp.asarray(a[None]))
    alone_b = model(jnp.asarray(b[None]))
    np.testing.assert_allclose(logits[0, :11], alone_a[0], atol=1e-5)
    np.testing.assert_allclose(logits[0, 11:18], alone_b[0], atol=1e-5)
    assert np.isfinite(np.asarray(logits)).all()  # padding rows stay finite


def test_scanned_equals_unscanned():
    scanned = init_model(_cfg(scan_layers=True), seed=2)
    looped = model_from_params(_cfg(scan_layers=False), canonical_params(scanned))
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, 512, (2, 24)))
    # Same math, different XLA programs: equal up to float32 summation order.
    np.testing.assert_allclose(
        np.asarray(scanned(tokens)), np.asarray(looped(tokens)), atol=1e-6, rtol=0
    )
    params = canonical_params(looped)
    for a, b in zip(
        jax.tree.leaves(params), jax.tree.leaves(canonical_params(scanned)), strict=True
    ):
        np.testing.assert_array_equal(a, b)


def _loss_and_grads(model, tokens):
    def loss(m):
        logits = m(tokens)
        return -jnp.mean(jax.nn.log_softmax(logits)[..., 0])

    return nnx.value_and_grad(loss)(model)


@pytest.mark.parametrize("policy", ["full", "save_dots", "save_dots_no_batch", "save_qkv_attn"])
@pytest.mark.parametrize("scan_layers", [True, False])
def test_remat_policies_keep_gradients(policy, scan_layers):
    base = init_model(_cfg(scan_layers=True), seed=3)
    params = canonical_params(base)
    tokens = jnp.asarray(np.random.default_rng(2).integers(0, 512, (2, 16)))
    ref_loss, ref_grads = _loss_and_grads(
        model_from_params(_cfg(scan_layers=scan_layers), params), tokens
    )
    model = model_from_params(_cfg(scan_layers=scan_layers, remat_policy=policy), params)
    loss, grads = _loss_and_grads(model, tokens)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads), strict=True):
        np.testing.assert_allclose(g, r, atol=1e-6)


def _saved(policy: str, scan_layers: bool) -> tuple[int, set[str]]:
    """(elements the backward pass keeps, checkpoint names among them) for one loss evaluation."""
    # jax 0.10 exports only the printing form publicly; the list form is what it prints.
    from jax._src.ad_checkpoint import saved_residuals

    params = canonical_params(init_model(_cfg(scan_layers=True), seed=3))
    cfg = _cfg(scan_layers=scan_layers, remat_policy=policy)
    tokens = jnp.asarray(np.random.default_rng(2).integers(0, 512, (2, 16)))
    residuals = saved_residuals(lambda p: model_from_params(cfg, p)(tokens).sum(), params)
    size = sum(int(np.prod(aval.shape)) for aval, _ in residuals)
    names = {why.split("'")[1] for _, why in residuals if why.startswith("named")}
    return size, names


@pytest.mark.parametrize("scan_layers", [True, False])
def test_remat_policies_save_what_they_say(scan_layers):
    """Each policy keeps strictly less than the one before it (a policy that did nothing would keep as
    much as "none"), and the named policies keep the values they name."""
    order = ["none", "save_dots", "save_dots_no_batch", "save_qkv_attn", "full"]
    saved = {policy: _saved(policy, scan_layers) for policy in order}
    sizes = [saved[p][0] for p in order]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == len(sizes), saved
    if not scan_layers:  # under scan the names are hidden inside the scanned body
        assert saved["save_qkv_attn"][1] == {"query", "key", "value", "attention"}
        assert saved["save_dots"][1] == saved["save_dots_no_batch"][1] == {"dense"}
        assert saved["full"][1] == set()


def test_bfloat16_compute_tracks_float32():
    model32 = init_model(_cfg(), seed=4)
    model16 = model_from_params(_cfg(compute_dtype="bfloat16"), canonical_params(model32))
    tokens = jnp.asarray(np.random.default_rng(3).integers(0, 512, (2, 16)))
    l32, l16 = model32(tokens), model16(tokens)
    assert l16.dtype == jnp.float32  # logits are float32 whatever the compute dtype
    assert float(jnp.abs(l32 - l16).max()) < 0.05 * float(jnp.abs(l32).max())
    assert float(jnp.abs(l32 - l16).max()) > 0  # it really computed in bfloat16


def test_splash_kernel_matches_xla_attention_in_interpret_mode():
    """The Pallas TPU kernel, run by the Pallas interpreter on CPU, against the XLA path."""
    rng = np.random.default_rng(5)
    b, length, heads, kv_heads, d = 2, 128, 4, 2, 32
    q = jnp.asarray(rng.normal(size=(b, length, heads, d)), jnp.float32) * d**-0.5
    k = jnp.asarray(rng.normal(size=(b, length, kv_heads, d)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(b, length, kv_heads, d)), jnp.float32)
    seg = jnp.asarray(np.repeat([[1] * 50 + [2] * 78], b, axis=0))
    pos = jnp.asarray(np.repeat([list(range(50)) + list(range(78))], b, axis=0))

    def ours(q, k, v):
        return splash_attention(q, k, v, seg, sharder=None, interpret=True)

    def ref(q, k, v):
        return xla_attention(q, k, v, seg, seg, pos, pos)

    np.testing.assert_allclose(ours(q, k, v), ref(q, k, v), atol=2e-5)
    g_ours = jax.grad(lambda *a: ours(*a).sum(), argnums=(0, 1, 2))(q, k, v)
    g_ref = jax.grad(lambda *a: ref(*a).sum(), argnums=(0, 1, 2))(q, k, v)
    for a, r in zip(g_ours, g_ref, strict=True):
        np.testing.assert_allclose(a, r, atol=2e-4)


def test_model_with_splash_attention_matches_xla_model():
    xla_model = init_model(_cfg(), seed=6)
    splash_model = model_from_params(
        _cfg(attention="splash", attention_interpret=True), canonical_params(xla_model)
    )
    tokens = jnp.asarray(np.random.default_rng(6).integers(0, 512, (1, 128)))
    np.testing.assert_allclose(splash_model(tokens), xla_model(tokens), atol=5e-5)


def test_splash_rejects_unaligned_length():
    model = init_model(_cfg(attention="splash", attention_interpret=True))
    with pytest.raises(ValueError, match="multiple of 128"):
        model(jnp.zeros((1, 100), jnp.int32))


def test_config_validation_messages():
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        get_preset("tiny", num_kv_heads=3)
    with pytest.raises(ValueError, match="remat_policy"):
        get_preset("tiny", remat_policy="everything")
    with pytest.raises(KeyError, match="unknown model preset 'llama9'"):
        get_preset("llama9")


@pytest.mark.parametrize(
    "name, billions",
    [("llama2_7b", 6.74), ("llama2_13b", 13.02), ("llama2_70b", 68.98), ("llama3_8b", 8.03)],
)
def test_preset_parameter_counts(name, billions):
    assert round(get_preset(name).num_params() / 1e9, 2) == billions
