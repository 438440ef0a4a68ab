"""The published InfinityMATH recipe on Llama-2-7B (see `published_recipe`): 3 epochs of the 101,380
InfinityMATH records = 3 x 793 steps of 128 sequences.

    python -m tpu_train.train --config=configs/llama2_7b_infinitymath.py --workdir=gs://BUCKET/runs/l2-7b-im \
        --config.init.hf_dir=/path/to/Llama-2-7b-hf
"""

from tpu_train.training.base_config import published_recipe


def get_config():
    return published_recipe(
        records=101_380, hf_dir="data/hf/Llama-2-7b-hf", mixture="infinitymath_pot"
    )
