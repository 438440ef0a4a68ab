"""A tiny model trained for a few steps: for tests and smoke runs (seconds on one CPU).

python -m tpu_train.train --config=configs/tiny_test.py --workdir=/tmp/tiny
"""

from tpu_train.training.base_config import base_config


def get_config():
    config = base_config()
    config.model.preset = "tiny"
    config.model.overrides.vocab_size = 4096  # the shipped tokenizer (data/tokenizer.model)
    config.model.compute_dtype = "float32"
    config.data.seq_len = 128
    config.data.feature_lengths = dict(inputs=64, targets=64)
    config.train.num_steps = 20
    config.train.batch_size = 8
    config.train.log_every = 5
    config.checkpoint.every_steps = 10
    config.optimizer.learning_rate = 3e-3
    config.optimizer.warmup_steps = 2
    return config
