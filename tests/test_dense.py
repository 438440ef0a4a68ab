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


def _dot_operand_shapes(fn, *args) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """(lhs shape, rhs shape) of every dot_general in the traced program of fn(*args)."""
    shapes = []

    def visit(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "dot_general":
                shapes.append(tuple(tuple(v.aval.shape) for v in eqn.invars))
            for param in eqn.params.values():  # nested programs (custom_vjp, pjit) hold more
                for sub in param if isinstance(param, tuple | list) else (param,):
                    inner = getattr(sub, "jaxpr", sub)  # a ClosedJaxpr wraps its Jaxpr
                    if hasattr(inner, "eqns"):
                        visit(inner)

    visit(jax.make_jaxpr(fn)(*args).jaxpr)
    return shapes


@pytest.mark.parametrize(
    "x_shape, w_shape, contract, left",
    [
        ((2, 5, 8), (8, 24), 1, "x"),  # 8 input features < 24 outputs: x on the left
        ((2, 5, 24), (24, 8), 1, "g"),  # 8 outputs < 24 inputs: the gradient on the left
        ((2, 5, 4, 6), (4, 6, 8), 2, "g"),
        ((2, 5, 8), (8, 3, 4), 1, "x"),
    ],
)
def test_weight_gradient_puts_the_smaller_operand_on_the_left(x_shape, w_shape, contract, left):
    """The weight gradient contracts tokens with the narrower of x and g on the left (the operand XLA:CPU
    copies into transposed form), where autodiff of tensordot would always put g there."""
    x = jnp.ones(x_shape)
    w = jnp.ones(w_shape)
    g_shape = (*x_shape[: len(x_shape) - contract], *w_shape[contract:])
    dots = _dot_operand_shapes(jax.grad(lambda w: dense(x, w, contract=contract).sum()), w)
    weight_grads = [d for d in dots if w_shape not in d]  # the dots of x and g (the forward has w)
    expected = (x_shape, g_shape) if left == "x" else (g_shape, x_shape)
    assert weight_grads == [expected], dots
