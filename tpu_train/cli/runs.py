"""What the run commands (`train`, `rl`) share: the multi-process flags and the errors that are the
user's to fix.

Defined once here, because absl refuses a flag defined twice in one process, and both commands
import this module.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
from absl import flags

from tpu_train.checkpoint import CheckpointError, CheckpointSaveError, WorkdirBusyError
from tpu_train.training.config_checks import ConfigError

_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "jax.distributed.initialize() (TPU VM pod slices)"
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 (multi-process)"
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "number of processes (multi-process)")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "this process's index (multi-process)")

# A config, a busy, full or damaged workdir: one line, no traceback.
USER_ERRORS = (ConfigError, WorkdirBusyError, CheckpointSaveError, CheckpointError)


def run_job(job: Callable[[], object]) -> None:
    """Joins the multi-process runtime when the flags ask for it, then runs `job`; a user error ends
    the command with `error: ...` and exit status 1."""
    if _COORDINATOR.value:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    elif _DISTRIBUTED.value:
        jax.distributed.initialize()
    try:
        job()
    except USER_ERRORS as err:
        raise SystemExit(f"error: {err}") from None
