"""Train a Llama-family model.

    python -m tpu_train.train --config=configs/NAME.py --workdir=DIR [--config.key=value ...]

A workdir that already holds checkpoints resumes from the latest complete one. On a TPU VM pod slice pass
--distributed (every worker runs the same command); for a multi-process run elsewhere give
--coordinator_address, --num_processes and --process_id.
"""

import jax
from absl import flags
from ml_collections import config_flags

from tpu_train.checkpoint import CheckpointError, CheckpointSaveError, WorkdirBusyError
from tpu_train.cli import run_main
from tpu_train.training.config_checks import ConfigError
from tpu_train.training.loop import train

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "ml_collections config file", lock_config=True
)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "run directory: checkpoints, TensorBoard logs, metrics"
)
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "jax.distributed.initialize() (TPU VM pod slices)"
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 (multi-process)"
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "number of processes (multi-process)")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "this process's index (multi-process)")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    del argv
    if _COORDINATOR.value:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    elif _DISTRIBUTED.value:
        jax.distributed.initialize()
    try:
        train(_CONFIG.value, _WORKDIR.value)
    # The user's to fix (a config, a busy, full or damaged workdir): one line, no traceback.
    except (ConfigError, WorkdirBusyError, CheckpointSaveError, CheckpointError) as err:
        raise SystemExit(f"error: {err}") from None


def run() -> None:
    """What `python -m tpu_train.train` does."""
    run_main(main, __doc__)


if __name__ == "__main__":
    run()
