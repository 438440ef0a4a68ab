"""The embedded default: a small Llama learns to write programs for GSM8K problems, on CPU, shipped data.

`./launch.sh` (python -m tpu_train.embedded) builds the program data, trains with this config, evaluates
on held-out number variants and a GSM8K test slice, exports to Hugging Face format and summarises.
Training alone: python -m tpu_train.train --config=configs/default.py --workdir=runs/default
(then data.mixture must name a registered task; the embedded runner registers `embedded_programs`).
"""

import ml_collections

from tpu_train.training.base_config import base_config


def get_config():
    c = base_config()
    c.seed = 0
    # ~3.6M parameters: 3 layers of width 192 over the shipped 4,096-piece tokenizer (sized so that
    # 1,000 training steps fit in about 16 minutes on 2 CPU cores).
    c.model.preset = "tiny"
    c.model.overrides = ml_collections.ConfigDict(
        dict(
            vocab_size=4096,
            hidden_size=192,
            intermediate_size=512,
            num_layers=3,
            num_heads=4,
            num_kv_heads=4,
            max_seq_len=512,
        )
    )
    c.model.compute_dtype = "float32"  # XLA:CPU has no fast bfloat16 matmul
    c.model.scan_layers = False  # 3 layers unrolled: about 20% faster on CPU than a scan over them
    c.mesh.shape = dict(data=1, fsdp=-1, sequence=1, tensor=1)

    c.data.mixture = "embedded_programs_mix"
    c.data.seq_len = 512
    c.data.feature_lengths = dict(inputs=192, targets=320)

    c.optimizer.learning_rate = 3e-3
    c.optimizer.schedule = "cosine"
    c.optimizer.warmup_steps = 20
    c.optimizer.end_lr_fraction = 0.05
    c.optimizer.weight_decay = 0.0
    c.optimizer.clip_norm = 1.0

    c.train.num_steps = 1000
    c.train.batch_size = 8
    c.train.log_every = 10
    c.checkpoint.every_steps = 100
    c.checkpoint.keep = 2

    # Read only by the embedded runner (tpu_train/embedded/run.py).
    c.embedded = ml_collections.ConfigDict()
    c.embedded.num_problems = 15  # GSM8K train problems turned into programs
    c.embedded.variants = 40  # number variants drawn per program (fewer where constraints allow)
    c.embedded.heldout_per_problem = 4  # the last 4 variants of a problem are held out
    c.embedded.cot_rate = 0.05  # share of GSM8K chain-of-thought examples mixed into training
    c.embedded.gsm8k_test_items = 50  # GSM8K test problems evaluated (PoT)
    c.embedded.max_new_tokens = 320
    return c
