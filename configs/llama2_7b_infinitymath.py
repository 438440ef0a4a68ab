"""The published InfinityMATH recipe on Llama-2-7B: full fine-tune from the Hugging Face checkpoint.

lr 2e-5, 3 epochs, cosine schedule, 3% warm-up, weight decay 0, global batch 128, bf16 compute (fp32 master
weights). Rows are not packed (one example per row, as the recipe trained), so an epoch of the 101,380
InfinityMATH records is ceil(101,380 / 128) = 793 steps.

    python -m tpu_train.train --config=configs/llama2_7b_infinitymath.py --workdir=gs://BUCKET/runs/l2-7b-im \
        --config.init.hf_dir=/path/to/Llama-2-7b-hf
"""

import math

from tpu_train.training.base_config import base_config

RECORDS = 101_380  # InfinityMATH release
EPOCHS = 3
BATCH = 128


def get_config():
    c = base_config()
    c.init.hf_dir = (
        "data/hf/Llama-2-7b-hf"  # user-downloaded transformers directory (with tokenizer.model)
    )
    c.model.compute_dtype = "bfloat16"
    c.model.param_dtype = "float32"
    c.model.remat_policy = "save_dots_no_batch"
    c.model.attention = "splash"
    c.mesh.shape = dict(data=1, fsdp=-1, sequence=1, tensor=1)
    c.data.mixture = "infinitymath_pot"
    c.data.seq_len = 1024
    c.data.feature_lengths = dict(inputs=512, targets=512)
    c.data.pack = False
    c.data.tokenizer = "data/hf/Llama-2-7b-hf/tokenizer.model"
    c.optimizer.learning_rate = 2e-5
    c.optimizer.schedule = "cosine"
    c.optimizer.warmup_fraction = 0.03
    c.optimizer.weight_decay = 0.0
    c.train.batch_size = BATCH
    c.train.num_steps = EPOCHS * math.ceil(RECORDS / BATCH)
    c.train.log_every = 10
    c.checkpoint.every_steps = 200
    c.checkpoint.keep = 2
    return c
