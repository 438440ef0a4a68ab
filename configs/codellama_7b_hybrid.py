"""The InfinityMATH hybrid recipe on CodeLlama-7B: InfinityMATH (PoT) mixed with MathInstruct (CoT + PoT),
optimised as the published recipe (see `published_recipe`); an epoch is both sets together
(101,380 + 262,039 records), mixed by size.

    python -m tpu_train.train --config=configs/codellama_7b_hybrid.py --workdir=gs://BUCKET/runs/cl-7b-hybrid \
        --config.init.hf_dir=/path/to/CodeLlama-7b-hf
"""

from tpu_train.training.base_config import published_recipe


def get_config():
    return published_recipe(
        records=101_380 + 262_039, hf_dir="data/hf/CodeLlama-7b-hf", mixture="infinitymath_hybrid"
    )
