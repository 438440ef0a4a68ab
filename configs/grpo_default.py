"""GRPO on the embedded default's fine-tuned model, with problems repopulated from its programs.

./launch.sh rl   (runs the embedded default first when runs/default/model is missing)
python -m tpu_train.rl --config=configs/grpo_default.py --workdir=runs/default_rl

Problems come from the embedded default's training programs (runs/default/data/train_programs.jsonl),
repopulated with fresh numbers each step; its held-out variants are never drawn and are evaluated
greedily before and after, with the GSM8K test slice. Sized for CPU: LoRA on the attention and MLP
projections, 4 problems x 8 completions per step, one on-policy update per batch. The KL term is off
(rl.kl_coef = 0): with LoRA its reference is the base without adapters, free in memory but one
more forward pass per step, which 2 cores cannot spare.
"""

from tpu_train.rl.config import base_rl_config

EMBEDDED = "runs/default"


def get_config():
    c = base_rl_config()
    c.seed = 0
    c.init.workdir = f"{EMBEDDED}/model"
    c.model.param_dtype = "float32"
    c.model.compute_dtype = "float32"
    c.model.scan_layers = True  # LoRA trains 1.5x faster with scanned layers on CPU (bench_lora)
    c.mesh.shape = dict(data=1, fsdp=-1, sequence=1, tensor=1)
    c.lora.rank = 16
    c.lora.alpha = 32.0
    c.optimizer.learning_rate = 1e-4
    c.optimizer.clip_norm = 1.0
    c.optimizer.weight_decay = 0.0
    c.checkpoint.every_steps = 5
    c.checkpoint.keep = 2

    c.rl.environment = "programs"
    c.rl.programs = f"{EMBEDDED}/data/train_programs.jsonl"
    c.rl.heldout = f"{EMBEDDED}/data/heldout_variants.jsonl"
    # ~165 s a step on 2 cores; the evaluations before and after take ~3 min each (15 min in all)
    c.rl.num_steps = 3
    c.rl.prompts_per_step = 4
    c.rl.group_size = 8
    c.rl.temperature = 1.0
    c.rl.max_new_tokens = 256  # as the embedded default evaluates: its answers average ~200 tokens
    c.rl.max_prompt_tokens = 192
    c.rl.rollout_rows = 32
    c.rl.microbatches = 8  # 4 rows at a time: the logits of 32 rows x 384 tokens x 49k are 2.4 GB
    c.rl.updates_per_batch = 1  # on-policy: each batch of rollouts is used once (CPU time)
    c.rl.kl_coef = 0.0
    c.rl.eval_items = 48
    c.rl.gsm8k_items = 50
    return c
