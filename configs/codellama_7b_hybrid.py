"""The InfinityMATH hybrid recipe on CodeLlama-7B: InfinityMATH (PoT) mixed with MathInstruct (CoT + PoT).

Same optimisation as the published recipe (lr 2e-5, 3 epochs, cosine, 3% warm-up, weight decay 0, batch
128, bf16). One epoch is taken as the two sets together (101,380 + 262,039 records), mixed by size.

    python -m tpu_train.train --config=configs/codellama_7b_hybrid.py --workdir=gs://BUCKET/runs/cl-7b-hybrid \
        --config.init.hf_dir=/path/to/CodeLlama-7b-hf
"""

import math

from tpu_train.training.base_config import base_config

RECORDS = 101_380 + 262_039
EPOCHS = 3
BATCH = 128


def get_config():
    c = base_config()
    c.init.hf_dir = "data/hf/CodeLlama-7b-hf"
    c.model.compute_dtype = "bfloat16"
    c.model.remat_policy = "save_dots_no_batch"
    c.model.attention = "splash"
    c.data.mixture = "infinitymath_hybrid"
    c.data.seq_len = 1024
    c.data.feature_lengths = dict(inputs=512, targets=512)
    c.data.pack = False
    c.data.tokenizer = "data/hf/CodeLlama-7b-hf/tokenizer.model"
    c.optimizer.learning_rate = 2e-5
    c.optimizer.schedule = "cosine"
    c.optimizer.warmup_fraction = 0.03
    c.optimizer.weight_decay = 0.0
    c.train.batch_size = BATCH
    c.train.num_steps = EPOCHS * math.ceil(RECORDS / BATCH)
    c.checkpoint.every_steps = 500
    c.checkpoint.keep = 2
    return c
