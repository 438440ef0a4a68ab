"""Train a Llama-family model.

    python -m tpu_train.train --config=configs/NAME.py --workdir=DIR [--config.key=value ...]

A workdir that already holds checkpoints resumes from the latest complete one. On a TPU VM pod slice pass
--distributed (every worker runs the same command); for a multi-process run elsewhere give
--coordinator_address, --num_processes and --process_id.
"""

from absl import flags
from ml_collections import config_flags

from tpu_train.cli import run_main, runs
from tpu_train.training.loop import train

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "ml_collections config file", lock_config=True
)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "run directory: checkpoints, TensorBoard logs, metrics"
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    del argv
    runs.run_job(lambda: train(_CONFIG.value, _WORKDIR.value))


def run() -> None:
    """What `python -m tpu_train.train` does."""
    run_main(main, __doc__)


if __name__ == "__main__":
    run()
