"""SeqIO registration of the embedded default's training data (the files `program_data.build` wrote)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import seqio

from tpu_train.data import tasks
from tpu_train.data.builders import InfinitymathConfig
from tpu_train.embedded.program_data import TRAIN_FILE

TASK = "embedded_programs"
MIXTURE = "embedded_programs_mix"


def register(
    data_dir: Path, cot_rate: float, tokenizer: str | Path = tasks.DEFAULT_TOKENIZER
) -> str:
    """Registers `embedded_programs` over data_dir/train_programs.jsonl and the mixture with GSM8K CoT;
    returns the mixture name."""
    tasks.register_tasks(vocab_path=tokenizer)
    config = InfinitymathConfig(
        # One prepared TFDS dataset per data folder (the builder's source stamp rebuilds it when the file changes).
        name="embedded_" + hashlib.md5(str(data_dir.resolve()).encode()).hexdigest()[:8],
        file_name=TRAIN_FILE,
        validation_percent=0,
    )
    tasks.add_task(
        TASK,
        "gsm8k_programs",
        "program",
        tokenizer,
        manual_dir=data_dir,
        config=config,
        splits=("train",),
    )
    seqio.MixtureRegistry.remove(MIXTURE)
    parts = [(TASK, 1.0 - cot_rate)] + ([("gsm8k_cot", cot_rate)] if cot_rate > 0 else [])
    seqio.MixtureRegistry.add(MIXTURE, parts)
    return MIXTURE
