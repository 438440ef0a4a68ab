"""SeqIO tasks and mixtures: MAmmoTH Alpaca prompts, response + EOS as the only loss targets.

Every task yields `inputs` (BOS + the Alpaca prompt, no EOS) and `targets` (the response + EOS).
`PrefixLMFeatureConverter(loss_on_targets_only=True)` concatenates them, so the loss mask covers the
response and its EOS exactly; padding uses id 0, never EOS (see `pipeline.py`).

Tasks:
    infinitymath_pot     InfinityMATH programs (user file), problem + " Let's write a program."
    mathinstruct         all MathInstruct rows; mathinstruct_cot / mathinstruct_pot by kind
    gsm8k_cot            GSM8K rationales, calculator annotations removed, "The answer is N."
    gsm8k_pot            GSM8K converted to verified programs (shipped)
    gsm8k_pot_variants   their repopulated number variants (shipped)
Mixtures (rates from the caller's config, defaults in DEFAULT_MIXTURES):
    infinitymath_hybrid  infinitymath_pot + mathinstruct
    gsm8k_pot_mix        gsm8k_pot + gsm8k_pot_variants (the embedded default; all shipped)

The prompt format itself lives in `tpu_train.data.prompts` (shared with sampling and evaluation).

Example:
    >>> names = register_tasks("data/tokenizer.model")  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Mapping
from pathlib import Path

import sentencepiece as spm
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from tpu_train.data.builders import InfinitymathConfig
from tpu_train.data.prompts import POT_TRIGGER, PROMPT_TEMPLATE
from tpu_train.data.sources import DEFAULT_TFDS_DIR, SHIPPED_DIR, prepare

DEFAULT_TOKENIZER = SHIPPED_DIR / "tokenizer.model"
DEFAULT_MIXTURES: dict[str, dict[str, float]] = {
    "infinitymath_hybrid": {"infinitymath_pot": 1.0, "mathinstruct": 1.0},
    "gsm8k_pot_mix": {"gsm8k_pot": 1.0, "gsm8k_pot_variants": 1.0},
}


def _tf_prompt(instruction: tf.Tensor) -> tf.Tensor:
    head, tail = PROMPT_TEMPLATE.split("{instruction}")
    return tf.strings.join([head, instruction, tail])


def _infinitymath(ex: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    instruction = tf.strings.join([ex["original_problem"], POT_TRIGGER])
    return {"inputs": _tf_prompt(instruction), "targets": ex["generated_program"], "id": ex["id"]}


def _mathinstruct(ex: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    return {"inputs": _tf_prompt(ex["instruction"]), "targets": ex["output"], "id": ex["id"]}


def _gsm8k_cot(ex: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    rationale = tf.strings.regex_replace(ex["answer"], r"<<[^<>]*>>", "")
    rationale = tf.strings.regex_replace(
        rationale, r"\n?#### *([^\n]*)\s*$", "\nThe answer is \\1."
    )
    return {"inputs": _tf_prompt(ex["question"]), "targets": rationale, "id": ex["id"]}


def _map(fn: Callable) -> Callable[[tf.data.Dataset], tf.data.Dataset]:
    return lambda ds: ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def _kind_filter(kind: str) -> Callable[[tf.data.Dataset], tf.data.Dataset]:
    return lambda ds: ds.filter(lambda ex: tf.equal(ex["kind"], kind))


def _prepend_bos(bos_id: int) -> Callable[[tf.data.Dataset], tf.data.Dataset]:
    def fn(ex: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        out = dict(ex)
        out["inputs"] = tf.concat([tf.constant([bos_id], tf.int32), ex["inputs"]], axis=0)
        return out

    return _map(fn)


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


def output_features(vocab_path: str | Path) -> dict[str, seqio.Feature]:
    """`inputs` without EOS, `targets` with EOS, over one sentencepiece vocabulary."""
    vocab = seqio.SentencePieceVocabulary(str(vocab_path))
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
    vocab_path: str | Path = DEFAULT_TOKENIZER,
    data_dir: str | Path = DEFAULT_TFDS_DIR,
    manual_dir: str | Path | None = None,
    config: tfds.core.BuilderConfig | None = None,
    kind: str | None = None,
    splits: tuple[str, ...] = ("train", "validation"),
) -> seqio.Task:
    """(Re-)register one task over a source (optionally with an explicit builder config).

    `fmt` is a key of FORMATS ("program", "instruct", "gsm8k_cot"); `kind` keeps only MathInstruct
    rows of that kind ("cot" / "pot").
    """
    steps: list[Callable] = [] if kind is None else [_kind_filter(kind)]
    steps += [_map(FORMATS[fmt]), seqio.preprocessors.tokenize]
    bos_id = spm.SentencePieceProcessor(model_file=str(vocab_path)).bos_id()
    if bos_id >= 0:
        steps.append(_prepend_bos(bos_id))
    steps.append(seqio.preprocessors.append_eos_after_trim)
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
        output_features=output_features(vocab_path),
    )


def register_tasks(
    vocab_path: str | Path = DEFAULT_TOKENIZER,
    data_dir: str | Path = DEFAULT_TFDS_DIR,
    manual_dir: str | Path | None = None,
    mixtures: Mapping[str, Mapping[str, float]] = DEFAULT_MIXTURES,
    infinitymath_field_map: str = "",
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
        add_task(name, source, fmt, vocab_path, data_dir, manual_dir, config, kind, splits)
        names.append(name)
    for name, rates in mixtures.items():
        unknown = sorted(set(rates) - set(seqio.TaskRegistry.names()))
        if unknown:
            raise ValueError(f"mixture {name!r} names unknown tasks {unknown}; known: {TASK_NAMES}")
        seqio.MixtureRegistry.remove(name)
        seqio.MixtureRegistry.add(name, [(task, float(rate)) for task, rate in rates.items()])
        names.append(name)
    return names


# Importing this module registers everything with the shipped tokenizer and default folders, which is
# what `data.registry_modules` in the training config relies on. Call `register_tasks` again to use
# another tokenizer (Llama-2 / CodeLlama `tokenizer.model`), TFDS folder or manual folder.
if DEFAULT_TOKENIZER.exists():
    register_tasks()
