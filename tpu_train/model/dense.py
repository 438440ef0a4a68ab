"""`dense(x, w)`: the model's weight matmuls, with a backward pass that leaves XLA:CPU less to copy.

    dense(x [..., *in], w [*in, *out]) -> [..., *out]    (contracts the trailing dims of x with w's leading)

The value is `jnp.tensordot`'s; only the weight gradient is written differently. Autodiff computes it as
`g^T x` and transposes the small result, so XLA:CPU, whose matmul library wants the contracted dim of the
left operand innermost, first copies the large activation gradient `g` ([tokens, out]) into transposed
form: for the MLP's 1376-wide projections those copies took about 7% of a CPU step (bench/bench_train.py
shape, profiled). Here the weight gradient contracts the token dims of whichever of `x` and `g` is smaller
on the left, so the copy XLA makes is of the smaller one. TPU performance of this form is not measured here;
XLA:TPU chooses operand layouts itself and does not need such copies.

Example:
    >>> import jax, jax.numpy as jnp
    >>> x, w = jnp.ones((2, 3, 4)), jnp.ones((4, 5, 6))
    >>> dense(x, w).shape
    (2, 3, 5, 6)
    >>> jax.grad(lambda w: dense(x, w).sum())(w).shape
    (4, 5, 6)
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name


def dense(
    x: jax.Array, w: jax.Array, *, contract: int = 1, out_dtype: jnp.dtype | None = None
) -> jax.Array:
    """Contracts the last `contract` dims of `x` with the first `contract` dims of `w`.

    `out_dtype` (e.g. float32 logits from bfloat16 operands) is the matmul's accumulation and result type;
    in the backward pass the incoming gradient is cast back to the operands' dtype, as mixed-precision
    training does everywhere else.
    """
    # Named so that remat policies can keep it: the custom VJP hides the dot inside from
    # `checkpoint_dots`-style policies, which `llama.remat_policy` therefore extends with this name.
    return checkpoint_name(_dense(contract, out_dtype, x, w), "dense")


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _dense(contract: int, out_dtype, x: jax.Array, w: jax.Array) -> jax.Array:
    return jnp.tensordot(x, w, axes=contract, preferred_element_type=out_dtype)


def _dense_fwd(contract, out_dtype, x, w):
    return _dense(contract, out_dtype, x, w), (x, w)


def _dense_bwd(contract, out_dtype, residuals, g):
    x, w = residuals
    g = g.astype(x.dtype)
    n_out = w.ndim - contract
    lead = x.ndim - contract  # token dims of x and of g
    out_axes = tuple(range(lead, g.ndim))
    dx = jnp.tensordot(g, w, axes=(out_axes, tuple(range(contract, w.ndim))))
    tokens = tuple(range(lead))
    if math.prod(x.shape[lead:]) <= math.prod(g.shape[lead:]):
        dw = jnp.tensordot(x, g, axes=(tokens, tokens))  # [*in, *out]
    else:
        dw = jnp.tensordot(g, x, axes=(tokens, tokens))  # [*out, *in]
        dw = jnp.transpose(dw, (*range(n_out, n_out + contract), *range(n_out)))
    return dx.astype(x.dtype), dw.astype(w.dtype)


_dense.defvjp(_dense_fwd, _dense_bwd)
