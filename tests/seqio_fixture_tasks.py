"""A small real SeqIO task for training tests: arithmetic questions and answers, byte-level vocabulary.

Imported by the tests (and by training subprocesses through `data.registry_modules`) to register
`fixture_arithmetic`; deterministic, so two runs see the same examples.
"""

import functools

import seqio
import tensorflow as tf

TASK = "fixture_arithmetic"
VOCAB = seqio.ByteVocabulary()


def _examples(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
    del shuffle_files, seed
    offset = 0 if split == "train" else 10_000
    idx = tf.data.Dataset.range(offset, offset + 2000)

    def to_text(i):
        a, b = i % 97, (i * 7) % 89
        question = tf.strings.format("What is {} plus {}?", (a, b))
        answer = tf.strings.as_string(a + b)
        return {"inputs": question, "targets": answer}

    return idx.map(to_text)


def register() -> None:
    if TASK in seqio.TaskRegistry.names():
        return
    features = {
        "inputs": seqio.Feature(VOCAB, add_eos=False),
        "targets": seqio.Feature(VOCAB, add_eos=True),
    }
    seqio.TaskRegistry.add(
        TASK,
        source=seqio.FunctionDataSource(
            functools.partial(_examples), splits=("train", "validation"), num_input_examples=None
        ),
        preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
        output_features=features,
    )


register()
