"""SeqIO registration of the embedded default's training mixture.

    embedded_programs         the chosen problems' programs and their training variants (`program_data`)
    embedded_gsm8k_programs   the shipped GSM8K train programs and variants, less the held-out problems
    gsm8k_cot                 GSM8K chain-of-thought rationales (a small share)

All in the run's prompt format and tokenized with the imported model's tokenizer. The held-out problems
are excluded from the shipped programs by id (`gsm8k/train/<n>`, variants `.../v<k>`), so no version of a
held-out problem other than its training variants reaches the model.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection, Mapping
from pathlib import Path

import seqio
import tensorflow as tf

from tpu_train.data import tasks
from tpu_train.data.builders import InfinitymathConfig
from tpu_train.data.prompts import PromptFormat
from tpu_train.embedded.program_data import TRAIN_FILE

TASK = "embedded_programs"
SHIPPED_TASK = "embedded_gsm8k_programs"
MIXTURE = "embedded_programs_mix"


def _without_problems(problem_ids: Collection[str]) -> Callable[[tf.data.Dataset], tf.data.Dataset]:
    excluded = tf.constant(sorted(problem_ids) or [""], tf.string)

    def keep(ex: Mapping[str, tf.Tensor]) -> tf.Tensor:
        problem = tf.strings.regex_replace(ex["id"], r"/v[0-9]+$", "")
        return tf.logical_not(tf.reduce_any(tf.equal(problem, excluded)))

    return lambda ds: ds.filter(keep)


def register(
    data_dir: Path,
    rates: Mapping[str, float],
    tokenizer: str | Path,
    prompt_format: PromptFormat,
    heldout_problems: Collection[str],
) -> str:
    """Registers the three tasks and the mixture (`rates` keyed by "embedded", "shipped", "cot");
    returns the mixture name."""
    tasks.register_tasks(vocab_path=tokenizer, prompt_format=prompt_format)
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
        prompt_format=prompt_format,
    )
    shipped = []
    for source in ("gsm8k_programs", "gsm8k_variants"):
        name = f"{SHIPPED_TASK}_{source.split('_')[1]}"
        task = tasks.add_task(
            name, source, "program", tokenizer, splits=("train",), prompt_format=prompt_format
        )
        # The exclusion runs on the raw records, before formatting and tokenization.
        seqio.TaskRegistry.remove(name)
        seqio.TaskRegistry.add(
            name,
            source=task.source,
            preprocessors=[_without_problems(heldout_problems), *task.preprocessors],
            output_features=task.output_features,
        )
        shipped.append(name)
    seqio.MixtureRegistry.remove(SHIPPED_TASK)
    seqio.MixtureRegistry.add(SHIPPED_TASK, [(name, 1.0) for name in shipped])
    parts = [
        (TASK, rates["embedded"]),
        (SHIPPED_TASK, rates["shipped"]),
        ("gsm8k_cot", rates["cot"]),
    ]
    seqio.MixtureRegistry.remove(MIXTURE)
    seqio.MixtureRegistry.add(MIXTURE, [(name, rate) for name, rate in parts if rate > 0])
    return MIXTURE
