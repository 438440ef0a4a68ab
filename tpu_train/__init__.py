"""tpu_train: a JAX/TPU training stack for mathematical-reasoning instruction tuning."""

from tpu_train.host_memory import keep_freed_memory
from tpu_train.xla_flags import add_cpu_defaults

add_cpu_defaults()  # before anything imports jax: XLA reads its flags once, at backend creation
keep_freed_memory()  # TPU_TRAIN_MALLOC=reuse only; before JAX starts threads with arenas of their own
