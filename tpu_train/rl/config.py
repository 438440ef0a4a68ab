"""The RL config fields with their defaults; `configs/grpo_*.py` start from this.

It shares the training config's `seed`, `model`, `init`, `lora`, `mesh`, `optimizer` and `checkpoint`
sections (`tpu_train.training.base_config`); `data` keeps only the tokenizer and prompt format, `init`
gains `workdir` (start from a tpu_train run, e.g. a fine-tuned one), and `rl` is its own.
"""

import ml_collections

from tpu_train.training.base_config import base_config


def base_rl_config() -> ml_collections.ConfigDict:
    c = base_config()
    del c["train"], c["eval"]
    c.data = ml_collections.ConfigDict(dict(tokenizer="", prompt_format="alpaca"))
    # A tpu_train workdir whose latest model (LoRA adapters merged) becomes step 0, with its tokenizer
    # and prompt format; or init.hf_dir / init.gguf as for training.
    c.init.workdir = ""
    c.optimizer.learning_rate = 1e-6
    c.optimizer.schedule = "constant"
    c.optimizer.warmup_steps = 0
    c.optimizer.warmup_fraction = 0.0
    c.checkpoint.every_steps = 10

    rl = c.rl = ml_collections.ConfigDict()
    # programs: InfinityMATH records, rewarded in the sandbox | sum: the CI fixture
    rl.environment = "programs"
    rl.programs = ""  # InfinityMATH-format JSONL whose programs generate the problems
    rl.heldout = ""  # InfinityMATH-format JSONL of held-out variants: never drawn, evaluated
    rl.num_steps = 20
    rl.prompts_per_step = 4
    rl.group_size = 8  # completions per prompt (G)
    rl.temperature = 1.0
    rl.top_p = 1.0
    rl.max_new_tokens = 256
    rl.max_prompt_tokens = 256  # a longer prompt is an error; rows are at most both together
    rl.rollout_rows = 16  # decode rows of the sampler (continuous batching)
    rl.microbatches = 1  # forward/backward over this many slices of the rollouts in turn (memory)
    rl.updates_per_batch = 2  # optimizer steps per batch of rollouts (the clipped ratio matters)
    rl.clip_low = 0.2
    rl.clip_high = 0.28  # DAPO's clip-higher
    # > 0: KL to the reference (LoRA: the base; else the starting model, kept in memory)
    rl.kl_coef = 0.0
    rl.scale_advantages = False  # divide by the group std (GRPO) or not (Dr. GRPO, the default)
    rl.format_bonus = 0.0  # added to the reward of a program that ran and returned a number
    rl.eval_every = 0  # greedy accuracy every N steps (0: at the start and the end only)
    rl.eval_items = 36  # held-out variants evaluated (the first N)
    rl.gsm8k_items = 0  # and the first N GSM8K test problems beside them
    rl.log_every = 1
    rl.executor_workers = 2
    rl.fault_injection_kill_at_step = -1  # tests only: SIGKILL the process before this step
    return c
