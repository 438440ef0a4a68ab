"""dense(): tensordot's value and gradients, with the weight gradient formed from the smaller operand."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tpu_train.model.dense import dense


@pytest.mark.parametrize(
    "x_shape, w_shape, contract",
    [
        ((2, 5, 8), (8, 24), 1),  # x narrower than the output: x is the one transposed
        ((2, 5, 24), (24, 8), 1),  # the output narrower: g is transposed, then the small result
        ((2, 5, 4, 6), (4, 6, 8), 2),  # attention's output projection, heads x head_dim -> embed
        ((2, 5, 8), (8, 3, 4), 1),  # q/k/v projections, embed -> heads x head_dim
    ],
)
def test_value_and_gradients_equal_autodiff_of_tensordot(x_shape, w_shape, contract):
    x = jax.random.normal(jax.random.key(0), x_shape)
    w = jax.random.normal(jax.random.key(1), w_shape)
    probe = jax.random.normal(
        jax.random.key(2), (*x_shape[: len(x_shape) - contract], *w_shape[contract:])
    )

    def loss(f):
        return lambda x, w: (f(x, w) * probe).sum()

    ours = jax.value_and_grad(loss(lambda x, w: dense(x, w, contract=contract)), argnums=(0, 1))
    ref = jax.value_and_grad(loss(lambda x, w: jnp.tensordot(x, w, contract)), argnums=(0, 1))
    (value, (dx, dw)), (ref_value, (ref_dx, ref_dw)) = ours(x, w), ref(x, w)
    np.testing.assert_allclose(value, ref_value, rtol=1e-5)
    assert dx.shape == x.shape and dw.shape == w.shape
    np.testing.assert_allclose(dx, ref_dx, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dw, ref_dw, rtol=1e-5, atol=1e-5)


def test_float32_result_from_bfloat16_operands_and_gradients_in_operand_dtype():
    x = jax.random.normal(jax.random.key(0), (2, 4, 8), jnp.bfloat16)
    w = jax.random.normal(jax.random.key(1), (8, 16), jnp.bfloat16)
    assert dense(x, w, out_dtype=jnp.float32).dtype == jnp.float32
    dx, dw = jax.grad(lambda x, w: dense(x, w, out_dtype=jnp.float32).sum(), argnums=(0, 1))(x, w)
    assert dx.dtype == dw.dtype == jnp.bfloat16
    np.testing.assert_allclose(
        dw.astype(np.float32),
        np.broadcast_to(x.astype(np.float32).sum((0, 1))[:, None], (8, 16)),
        rtol=2e-2,
    )
