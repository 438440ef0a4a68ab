"""Reinforcement learning from execution feedback (GRPO) on repopulated programs.

    python -m tpu_train.rl --config=configs/grpo_NAME.py --workdir=DIR [--config.key=value ...]

The run starts from `config.init.workdir` (a tpu_train run, e.g. a fine-tuned one) or an imported
checkpoint (`config.init.hf_dir` / `config.init.gguf`); a workdir that already holds RL checkpoints
resumes from the latest complete one. Each step samples `rl.group_size` completions for each of
`rl.prompts_per_step` fresh problems, runs their programs in the sandbox, and updates the policy.
"""

from absl import flags
from ml_collections import config_flags

from tpu_train.checkpoint import CheckpointError, CheckpointSaveError, WorkdirBusyError
from tpu_train.cli import run_main
from tpu_train.training.config_checks import ConfigError

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "ml_collections config file (configs/grpo_*.py)", lock_config=True
)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "RL run directory: checkpoints, metrics.jsonl, TensorBoard, reward curve"
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    del argv
    from tpu_train.rl.loop import train_rl  # after flag parsing: --help stays fast

    try:
        train_rl(_CONFIG.value, _WORKDIR.value)
    except (ConfigError, WorkdirBusyError, CheckpointSaveError, CheckpointError) as err:
        raise SystemExit(f"error: {err}") from None


def run() -> None:
    """What `python -m tpu_train.rl` does."""
    run_main(main, __doc__)


if __name__ == "__main__":
    run()
