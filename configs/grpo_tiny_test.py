"""GRPO on the sum fixture: a tiny model from scratch learns to answer [BOS, a, b] with a + b.

python -m tpu_train.rl --config=configs/grpo_tiny_test.py --workdir=/tmp/grpo_tiny

No tokenizer and no sandbox: the prompts are token ids and the reward is the first generated token
(`tpu_train.rl.environment.SumEnvironment`); seconds per step on one CPU. For tests and smoke runs.
"""

from tpu_train.rl.config import base_rl_config


def get_config():
    c = base_rl_config()
    c.seed = 0
    c.model.preset = "tiny"
    c.model.overrides.vocab_size = 16  # BOS 1, digits 3..11
    c.model.overrides.max_seq_len = 8
    c.model.compute_dtype = "float32"
    c.optimizer.learning_rate = 1e-3
    c.optimizer.clip_norm = 1.0
    c.checkpoint.every_steps = 5

    c.rl.environment = "sum"
    c.rl.num_steps = 40
    c.rl.prompts_per_step = 8
    c.rl.group_size = 16
    c.rl.max_prompt_tokens = 3
    c.rl.max_new_tokens = 1
    c.rl.rollout_rows = 128
    c.rl.updates_per_batch = 2
    return c
