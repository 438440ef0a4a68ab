"""SeqIO tasks and mixtures: MAmmoTH Alpaca prompts, response + EOS as the only loss targets.

Every task yields `inputs` (the prompt in the run's prompt format, after the BOS the tokenizer adds, if
any; no EOS) and `targets` (the response + EOS). `PrefixLMFeatureConverter(loss_on_targets_only=True)`
concatenates them, so the loss mask covers the response and its EOS exactly; padding uses id 0 and is
told apart from tokens by the segment ids (see `pipeline.py`).

Over-long examples are dropped, not cut: a prompt cut at its end loses the format's tail ("### Response:")
and a response cut short would still end in EOS, teaching the model to stop early. `count_overlong`
counts what a task drops at given feature lengths; the training loop reports it.

Tasks:
    infinitymath_pot     InfinityMATH programs (user file), problem + " Let's write a program."
    mathinstruct         all MathInstruct rows; mathinstruct_cot / mathinstruct_pot by kind
    gsm8k_cot            GSM8K rationales, calculator annotations removed, "The answer is N."
    gsm8k_pot            GSM8K converted to verified programs (shipped)
    gsm8k_pot_variants   their repopulated number variants (shipped)
Mixtures (rates from the caller's config, defaults in DEFAULT_MIXTURES):
    infinitymath_hybrid  infinitymath_pot + mathinstruct
    gsm8k_pot_mix        gsm8k_pot + gsm8k_pot_variants (the embedded default; all shipped)

The prompt formats live in `tpu_train.data.prompts` (shared with sampling and evaluation); the
tokenizer is a sentencepiece `tokenizer.model` or a Hugging Face `tokenizer.json` directory
(`tpu_train.data.vocabulary`).

Example:
    >>> names = register_tasks("data/tokenizer.model")  # doctest: +SKIP
    >>> names = register_tasks("runs/smollm2", prompt_format=make_format("chat", "runs/smollm2"))  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Mapping
from pathlib import Path

import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from tpu_train.data.builders import InfinitymathConfig
from tpu_train.data.prompts import ALPACA, POT_TRIGGER, PromptFormat
from tpu_train.data.sources import DEFAULT_TFDS_DIR, SHIPPED_TOKENIZER, prepare
from tpu_train.data.vocabulary import load_vocabulary, prompt_prefix_ids

DEFAULT_MIXTURES: dict[str, dict[str, float]] = {
    "infinitymath_hybrid": {"infinitymath_pot": 1.0, "mathinstruct": 1.0},
    "gsm8k_pot_mix": {"gsm8k_pot": 1.0, "gsm8k_pot_variants": 1.0},
}


def _tf_prompt(fmt: PromptFormat, instruction: tf.Tensor) -> tf.Tensor:
    return tf.strings.join([fmt.head, instruction, fmt.tail])


def _infinitymath(fmt: PromptFormat, ex: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    instruction = tf.strings.join([ex["original_problem"], POT_TRIGGER])
    return {
        "inputs": _tf_prompt(fmt, instruction),
        "targets": ex["generated_program"],
        "id": ex["id"],
    }


def _mathinstruct(fmt: PromptFormat, ex: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    return {"inputs": _tf_prompt(fmt, ex["instruction"]), "targets": ex["output"], "id": ex["id"]}


def _gsm8k_cot(fmt: PromptFormat, ex: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    rationale = tf.strings.regex_replace(ex["answer"], r"<<[^<>]*>>", "")
    rationale = tf.strings.regex_replace(
        rationale, r"\n?#### *([^\n]*)\s*$", "\nThe answer is \\1."
    )
    return {"inputs": _tf_prompt(fmt, ex["question"]), "targets": rationale, "id": ex["id"]}


def _map(fn: Callable) -> Callable[[tf.data.Dataset], tf.data.Dataset]:
    return lambda ds: ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def _kind_filter(kind: str) -> Callable[[tf.data.Dataset], tf.data.Dataset]:
    return lambda ds: ds.filter(lambda ex: tf.equal(ex["kind"], kind))


def _prepend(ids: tuple[int, ...]) -> Callable[[tf.data.Dataset], tf.data.Dataset]:
    """Puts the ids the tokenizer adds before a text (its BOS, if it adds one) before the prompt."""

    def fn(ex: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        out = dict(ex)
        out["inputs"] = tf.concat([tf.constant(ids, tf.int32), ex["inputs"]], axis=0)
        return out

    return _map(fn)


def drop_overlong(
    dataset: tf.data.Dataset, sequence_length: Mapping[str, int] | None
) -> tf.data.Dataset:
    """Drops examples whose prompt or response (+ EOS) does not fit its feature length (SeqIO passes
    `sequence_length`, the task feature lengths; None keeps everything). `append_eos_after_trim` runs
    after it, so it appends EOS and trims nothing."""
    if sequence_length is None:
        return dataset
    inputs, targets = sequence_length["inputs"], sequence_length["targets"]
    return dataset.filter(
        lambda ex: tf.logical_and(
            tf.size(ex["inputs"]) <= inputs, tf.size(ex["targets"]) + 1 <= targets
        )
    )


def _load_split(
    source: str,
    data_dir: str,
    manual_dir: str | None,
    config: tfds.core.BuilderConfig | None,
    split: str,
    shuffle_files: bool,
    seed: int | None = None,
) -> tf.data.Dataset:
    builder = prepare(source, data_dir, manual_dir, config)
    read_config = tfds.ReadConfig(shuffle_seed=seed) if seed is not None else None
    return builder.as_dataset(split=split, shuffle_files=shuffle_files, read_config=read_config)


def output_features(vocab: seqio.Vocabulary) -> dict[str, seqio.Feature]:
    """`inputs` without EOS, `targets` with EOS, over one vocabulary."""
    return {
        "inputs": seqio.Feature(vocab, add_eos=False),
        "targets": seqio.Feature(vocab, add_eos=True),
    }


FORMATS: dict[str, Callable] = {
    "program": _infinitymath,
    "instruct": _mathinstruct,
    "gsm8k_cot": _gsm8k_cot,
}
_TASKS: dict[str, tuple[str, str, str | None, tuple[str, ...]]] = {
    # name: (source, format, kind filter, splits)
    "infinitymath_pot": ("infinitymath", "program", None, ("train", "validation")),
    "mathinstruct": ("mathinstruct", "instruct", None, ("train", "validation")),
    "mathinstruct_cot": ("mathinstruct", "instruct", "cot", ("train", "validation")),
    "mathinstruct_pot": ("mathinstruct", "instruct", "pot", ("train", "validation")),
    "gsm8k_cot": ("gsm8k", "gsm8k_cot", None, ("train", "test")),
    "gsm8k_pot": ("gsm8k_programs", "program", None, ("train", "validation")),
    "gsm8k_pot_variants": ("gsm8k_variants", "program", None, ("train", "validation")),
}
TASK_NAMES = tuple(_TASKS)


def add_task(
    name: str,
    source: str,
    fmt: str,
    vocab_path: str | Path = SHIPPED_TOKENIZER,
    data_dir: str | Path = DEFAULT_TFDS_DIR,
    manual_dir: str | Path | None = None,
    config: tfds.core.BuilderConfig | None = None,
    kind: str | None = None,
    splits: tuple[str, ...] = ("train", "validation"),
    prompt_format: PromptFormat = ALPACA,
) -> seqio.Task:
    """(Re-)register one task over a source (optionally with an explicit builder config).

    `fmt` is a key of FORMATS ("program", "instruct", "gsm8k_cot"); `kind` keeps only MathInstruct
    rows of that kind ("cot" / "pot"); `vocab_path` a tokenizer.model or a tokenizer.json directory.
    """
    vocab = load_vocabulary(vocab_path)
    steps: list[Callable] = [] if kind is None else [_kind_filter(kind)]
    steps += [_map(functools.partial(FORMATS[fmt], prompt_format)), seqio.preprocessors.tokenize]
    prefix = prompt_prefix_ids(vocab)
    if prefix:
        steps.append(_prepend(prefix))
    steps += [drop_overlong, seqio.preprocessors.append_eos_after_trim]
    dataset_fn = functools.partial(
        _load_split,
        source,
        str(data_dir),
        None if manual_dir is None else str(manual_dir),
        config,
    )
    seqio.TaskRegistry.remove(name)
    return seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(dataset_fn, splits=splits),
        preprocessors=steps,
        output_features=output_features(vocab),
    )


def register_tasks(
    vocab_path: str | Path = SHIPPED_TOKENIZER,
    data_dir: str | Path = DEFAULT_TFDS_DIR,
    manual_dir: str | Path | None = None,
    mixtures: Mapping[str, Mapping[str, float]] = DEFAULT_MIXTURES,
    infinitymath_field_map: str = "",
    prompt_format: PromptFormat = ALPACA,
) -> list[str]:
    """(Re-)register every task and mixture; returns their names.

    Idempotent: existing registrations of these names are replaced, so calling it again with
    another vocabulary or data directory takes effect. `manual_dir` holds the user's downloads
    (infinitymath.jsonl, MathInstruct.json); tasks over them fail at load time without it.
    `infinitymath_field_map` ("original_problem=<name>,...") maps fields of infinitymath.jsonl that
    arrive under other names; the prepared data of each mapping is kept apart.
    """
    names = []
    for name, (source, fmt, kind, splits) in _TASKS.items():
        config = None
        if source == "infinitymath" and infinitymath_field_map:
            digest = hashlib.md5(infinitymath_field_map.encode()).hexdigest()[:8]
            config = InfinitymathConfig(name=f"full_{digest}", field_map=infinitymath_field_map)
        add_task(
            name, source, fmt, vocab_path, data_dir, manual_dir, config, kind, splits, prompt_format
        )
        names.append(name)
    for name, rates in mixtures.items():
        unknown = sorted(set(rates) - set(seqio.TaskRegistry.names()))
        if unknown:
            raise ValueError(f"mixture {name!r} names unknown tasks {unknown}; known: {TASK_NAMES}")
        seqio.MixtureRegistry.remove(name)
        seqio.MixtureRegistry.add(name, [(task, float(rate)) for task, rate in rates.items()])
        names.append(name)
    return names


def count_overlong(
    name: str, feature_lengths: Mapping[str, int], split: str = "train"
) -> tuple[int, int]:
    """(examples dropped as too long, examples in all) for a registered task or mixture at the given
    feature lengths: one pass over the tokenized data."""
    dropped = total = 0
    for task in seqio.get_subtasks(seqio.get_mixture_or_task(name)):
        if split not in task.splits:
            continue
        ds = task.get_dataset(sequence_length=None, split=split, shuffle=False, num_epochs=1)
        for ex in ds.as_numpy_iterator():
            total += 1
            too_long = len(ex["inputs"]) > feature_lengths["inputs"]
            dropped += too_long or len(ex["targets"]) > feature_lengths["targets"]
    return dropped, total


# Importing this module registers everything with the shipped tokenizer and default folders, which is
# what `data.registry_modules` in the training config relies on. Call `register_tasks` again to use
# another tokenizer (Llama-2 / CodeLlama `tokenizer.model`), TFDS folder or manual folder.
if SHIPPED_TOKENIZER.exists():
    register_tasks()
