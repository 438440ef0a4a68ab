"""tpu_train's XLA:CPU defaults: added to XLA_FLAGS unless the user set them, and in force in compiled code."""

import re

import jax
import jax.numpy as jnp

from tpu_train.model.attention import xla_attention
from tpu_train.xla_flags import add_cpu_defaults


def test_defaults_are_appended_and_user_values_win():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    assert add_cpu_defaults(env) == (
        "--xla_force_host_platform_device_count=8 "
        "--xla_cpu_experimental_ynn_fusion_type=individual_dot"
    )
    assert add_cpu_defaults(env) == env["XLA_FLAGS"]  # idempotent
    mine = {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=dot,eltwise"}
    assert add_cpu_defaults(mine) == "--xla_cpu_experimental_ynn_fusion_type=dot,eltwise"
    assert add_cpu_defaults({}) == "--xla_cpu_experimental_ynn_fusion_type=individual_dot"


def test_attention_gradient_keeps_elementwise_work_out_of_library_matmuls():
    b, length, h, d = 2, 128, 4, 32
    q, k, v = (jax.random.normal(jax.random.key(i), (b, length, h, d)) for i in range(3))
    ids = jnp.ones((b, length), jnp.int32)
    pos = jnp.broadcast_to(jnp.arange(length), (b, length))

    def loss(q, k, v):
        return xla_attention(q, k, v, ids, ids, pos, pos).sum()

    hlo = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(q, k, v).compile().as_text()
    bodies = {}
    for name, body in re.findall(r"\n%([\w.\-]+) [^\n]*\{\n(.*?)\n\}", hlo, re.S):
        bodies[name] = body
    library = re.findall(r'calls=%([\w.\-]+)[^\n]*"kind":"__ynn_fusion"', hlo)
    assert library, "expected XLA:CPU to hand the matmuls to YNNPACK"
    for name in library:
        ops = re.findall(r"= \S+ (\w[\w-]*)\(", bodies[name])
        assert [op for op in ops if op not in ("parameter", "bitcast")] == ["dot"], ops
