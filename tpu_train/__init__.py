"""tpu_train: a JAX/TPU training stack for mathematical-reasoning instruction tuning."""

from tpu_train.xla_flags import add_cpu_defaults

add_cpu_defaults()  # before anything imports jax: XLA reads its flags once, at backend creation
