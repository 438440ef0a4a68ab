"""Reinforcement learning from execution feedback (GRPO) on repopulated programs.

    python -m tpu_train.rl --config=configs/grpo_NAME.py --workdir=DIR [--config.key=value ...]

The run starts from `config.init.workdir` (a tpu_train run, e.g. a fine-tuned one) or an imported
checkpoint (`config.init.hf_dir` / `config.init.gguf`); a workdir that already holds RL checkpoints
resumes from the latest complete one. Each step samples `rl.group_size` completions for each of
`rl.prompts_per_step` fresh problems, runs their programs in the sandbox, and updates the policy.
Multi-process as for training: --distributed on a TPU VM pod slice (every worker runs the same
command), or --coordinator_address, --num_processes and --process_id.
"""

from absl import flags
from ml_collections import config_flags

from tpu_train.cli import run_main, runs

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

    runs.run_job(lambda: train_rl(_CONFIG.value, _WORKDIR.value))


def run() -> None:
    """What `python -m tpu_train.rl` does."""
    run_main(main, __doc__)


if __name__ == "__main__":
    run()
