"""SeqIO vocabularies for training: a sentencepiece `tokenizer.model` or an HF `tokenizer.json`.

`load_vocabulary(path)` picks the vocabulary for a tokenizer path: a directory with `tokenizer.json`
gives `HfTokenizerVocabulary` (preferred when a `tokenizer.model` sits next to it), one with
`tokenizer.model` (or a `.model` file) gives `seqio.SentencePieceVocabulary`.

BOS: SeqIO never adds one; the tasks prepend `prompt_prefix_ids(vocab)` to `inputs`. BOS is added
only where the tokenizer's own config says so: sentencepiece models with a BOS id (Llama 1/2), and
`tokenizer.json` tokenizers whose post-processor puts ids before a text (Llama 3's
`<|begin_of_text|>`; SmolLM2 adds none) or whose `tokenizer_config.json` sets `add_bos_token`.
`HfTokenizerVocabulary` wraps the sampler's `tpu_train.sampling.tokenizer.HfTokenizer`, so training
rows start with the ids the sampler feeds, and the sampler stays free of TensorFlow.

EOS and padding: `targets` get the tokenizer's `eos_token` id through `seqio.Feature(add_eos=True)`.
SeqIO pads with id 0 whatever the tokenizer's pad token is, so a pad token equal to EOS (SmolLM2:
pad = eos = `<|im_end|>` = 2, while id 0 is `<|endoftext|>`) changes nothing: padding is never
written as id 2 and EOS keeps loss weight 1 in
`seqio.PrefixLMFeatureConverter(loss_on_targets_only=True)`. What id 0 does affect:
- an EOS of id 0 (SmolLM2 *base*: `<|endoftext|>`) would be taken for padding (weight 0, trimmed
  by packing), so `HfTokenizerVocabulary` refuses it;
- SeqIO's converters take `id != 0` as "not padding", so a real id-0 token inside a row (Llama 3's
  "!") gets loss weight 0 unless weights are rebuilt from segment ids (`tpu_train.data.pipeline`).

Example:
    >>> vocab = load_vocabulary("data/tokenizer.model")  # doctest: +SKIP
    >>> prompt_prefix_ids(vocab)  # doctest: +SKIP
    (1,)
    >>> vocab = load_vocabulary("runs/smollm2")  # doctest: +SKIP
    >>> vocab.encode("<|im_start|>user"), prompt_prefix_ids(vocab), vocab.eos_id  # doctest: +SKIP
    ([1, 4093], (), 2)
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import seqio
import tensorflow as tf
from etils import epath

from tpu_train import tokenizer_files

if TYPE_CHECKING:
    from tpu_train.sampling.tokenizer import HfTokenizer

__all__ = ["HfTokenizerVocabulary", "load_vocabulary", "prompt_prefix_ids"]

# Spelled here, not imported: `tpu_train.sampling` is imported lazily (see `_hf_tokenizer`).


def _hf_tokenizer(path: str | Path | epath.Path) -> HfTokenizer:
    # Imported on use: `tpu_train.sampling`'s package init loads the model stack (checkpoint,
    # interop), and those modules may import this one; a top-level import would be a cycle.
    from tpu_train.sampling.tokenizer import HfTokenizer

    return HfTokenizer(path)


class HfTokenizerVocabulary(seqio.Vocabulary):
    """A Hugging Face `tokenizer.json` as a SeqIO vocabulary, through the `tokenizers` library.

    `path` is a directory holding `tokenizer.json` (and optionally `tokenizer_config.json` /
    `special_tokens_map.json`) or the JSON file itself. `encode` adds no special tokens (SeqIO
    appends EOS itself; BOS comes from `prompt_prefix_ids`), but special-token strings in a text map
    to their ids as AutoTokenizer does, so a chat prompt's `<|im_start|>` is one token. `decode`
    drops special tokens. `encode_tf` / `decode_tf` run the same Python tokenizer inside tf.data
    graphs through `tf.numpy_function`, so they give exactly the ids of `encode` (such graphs cannot
    be serialized, e.g. for tf.data service). Equality and hashing go by the files' contents;
    pickles and copies carry the contents, not the path.

    Ids: `eos_id` is the config's `eos_token`; `unk_id` its `unk_token` (else the model's);
    `vocab_size` counts added tokens; `pad_id` stays SeqIO's 0 whatever the config's `pad_token` is.

    Example:
        >>> vocab = HfTokenizerVocabulary("runs/llama3")  # doctest: +SKIP
        >>> vocab.encode("Hi"), vocab.bos_id, vocab.eos_id, vocab.vocab_size  # doctest: +SKIP
        ([13347], 128000, 128001, 128256)
        >>> vocab.decode([128000, 13347, 128001])  # doctest: +SKIP
        'Hi'
        >>> ds = tf.data.Dataset.from_tensor_slices(["Hi"]).map(vocab.encode_tf)  # doctest: +SKIP
        >>> [x.tolist() for x in ds.as_numpy_iterator()]  # doctest: +SKIP
        [[13347]]
    """

    def __init__(self, path: str | Path | epath.Path):
        self.tokenizer = _hf_tokenizer(path)
        if self.tokenizer.eos_id == 0:
            # SeqIO takes id 0 for padding: its converters give an EOS of id 0 loss weight 0 and
            # packing trims it off as trailing padding, so the model would never learn to stop.
            raise ValueError(
                f"{self.tokenizer.path}: eos_token has id 0, SeqIO's padding id, so training "
                "could not learn EOS. Set eos_token in tokenizer_config.json to a token with "
                "another id (SmolLM2-Instruct: <|im_end|>)"
            )
        super().__init__(extra_ids=0)

    @property
    def bos_id(self) -> int | None:
        """The BOS the tokenizer puts before a text (first of `prompt_prefix_ids`); None if none."""
        return self.tokenizer.bos_id

    @property
    def eos_id(self) -> int | None:
        return self.tokenizer.eos_id

    @property
    def unk_id(self) -> int | None:
        return self.tokenizer.unk_id

    @property
    def _base_vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def _encode(self, s: str) -> Sequence[int]:
        return self.tokenizer.encode(s, add_bos=False)

    def _decode(self, ids: Iterable[int]) -> str:
        return self.tokenizer.decode(ids)

    # --- TensorFlow: the Python tokenizer behind tf.numpy_function ------------------------------
    # Not converted by autograph: seqio's preprocessors run under it, and converting these methods
    # (and the properties they touch) failed at random in long runs (`tf___base_vocab_size() takes
    # 1 positional argument but 2 were given`); they are plain graph-building code.

    def _encode_np(self, texts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = self.tokenizer.encode_batch([t.decode("utf-8") for t in texts.tolist()])
        values = np.asarray([i for row in rows for i in row], dtype=np.int32)
        return values, np.asarray([len(row) for row in rows], dtype=np.int64)

    @tf.autograph.experimental.do_not_convert
    def _encode_tf(self, s: tf.Tensor) -> tf.Tensor | tf.RaggedTensor:
        """A scalar string -> 1-D int32 ids (what seqio's `tokenize` maps per example); strings of
        shape [d1, ..., dk] -> an int32 RaggedTensor of shape [d1, ..., dk, None], as
        `seqio.SentencePieceVocabulary` returns."""
        s = tf.convert_to_tensor(s, dtype=tf.string)
        if s.shape.rank is None:
            raise ValueError("encode_tf needs a string tensor of known rank")
        values, lengths = tf.numpy_function(
            self._encode_np, [tf.reshape(s, [-1])], [tf.int32, tf.int64], stateful=False
        )
        # numpy_function loses static shapes; seqio's length checks and padding need rank 1.
        values.set_shape([None])
        lengths.set_shape([None])
        if s.shape.rank == 0:
            return values
        out = tf.RaggedTensor.from_row_lengths(values, lengths, validate=False)
        # Regroup the flat rows by the input's inner dimensions, innermost first.
        dims = tf.shape(s, out_type=tf.int64)
        for axis in range(s.shape.rank - 1, 0, -1):
            out = tf.RaggedTensor.from_uniform_row_length(out, dims[axis], validate=False)
        return out

    def _decode_np(self, ids: np.ndarray, stop_at_eos: bool) -> np.ndarray:
        eos, unk, size = self.eos_id, self.unk_id, self._base_vocab_size
        out = []
        for row in ids.tolist():  # [rows, length]
            if unk is not None:  # as seqio.Vocabulary.decode does
                row = [unk if i >= size else i for i in row]
            if stop_at_eos and eos is not None and eos in row:
                row = row[: row.index(eos)]
            out.append(self.tokenizer.decode(row).encode("utf-8"))
        return np.asarray(out, dtype=object)

    @tf.autograph.experimental.do_not_convert
    def _detokenize_tf(self, ids: tf.Tensor, stop_at_eos: bool) -> tf.Tensor:
        ids = tf.convert_to_tensor(ids)
        if ids.shape.rank is None or ids.shape.rank < 1:
            raise ValueError(f"decode_tf takes ids of rank >= 1, got shape {ids.shape}")
        shape = tf.shape(ids)
        rows = tf.reshape(tf.cast(ids, tf.int32), [-1, shape[-1]])
        texts = tf.numpy_function(
            lambda x: self._decode_np(x, stop_at_eos), [rows], tf.string, stateful=False
        )
        texts.set_shape([None])
        return tf.reshape(texts, shape[:-1])

    @tf.autograph.experimental.do_not_convert
    def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
        """Ids of shape [..., length] -> strings of shape [...]; special tokens dropped."""
        return self._detokenize_tf(ids, stop_at_eos=False)

    @tf.autograph.experimental.do_not_convert
    def decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
        """Like `seqio.Vocabulary.decode_tf` (each row's text up to its first EOS), but cutting at
        EOS instead of overwriting what follows with id 0: here id 0 is usually a real token ("!" in
        Llama 3). A row without EOS still decodes its id-0 padding as that token."""
        if ids.shape == (0,):
            return tf.constant(b"", dtype=tf.string)
        return self._detokenize_tf(ids, stop_at_eos=True)

    # --- identity -------------------------------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, HfTokenizerVocabulary)
            and self.tokenizer.digest == other.tokenizer.digest
        )

    def __hash__(self) -> int:
        # seqio.Feature is a frozen dataclass; defining __eq__ alone would make Features unhashable.
        return hash(self.tokenizer.digest)

    def __str__(self) -> str:
        tok = self.tokenizer
        return f"HfTokenizerVocabulary(file={tok.path}, sha256={tok.digest[:12]})"

    __repr__ = __str__


def prompt_prefix_ids(vocab: seqio.Vocabulary) -> tuple[int, ...]:
    """The ids a prompt starts with before its text, as the sampler encodes it.

    `HfTokenizerVocabulary`: what the tokenizer's config puts there (Llama 3: `<|begin_of_text|>`;
    SmolLM2: nothing). `seqio.SentencePieceVocabulary`: (bos,) when the model has a BOS id >= 0 (the
    Llama convention). Any other vocabulary: ().

    Example:
        >>> prompt_prefix_ids(seqio.ByteVocabulary())
        ()
        >>> sp = seqio.SentencePieceVocabulary("data/tokenizer.model")  # doctest: +SKIP
        >>> prompt_prefix_ids(sp)  # doctest: +SKIP
        (1,)
    """
    if isinstance(vocab, HfTokenizerVocabulary):
        return vocab.tokenizer.prefix_ids
    if isinstance(vocab, seqio.SentencePieceVocabulary):
        bos = vocab.bos_id
        return (int(bos),) if bos is not None and bos >= 0 else ()
    return ()


def _sentencepiece_vocabulary(model_file: epath.Path) -> seqio.SentencePieceVocabulary:
    """`seqio.SentencePieceVocabulary` on a `.model` file. SeqIO reads it through TF's gfile, whose
    GCS client is not the one the rest of the project uses (etils.epath: gcsfs or gfile), so a cloud
    file is first copied through epath into a local file named by its contents."""
    if "://" not in str(model_file):
        return seqio.SentencePieceVocabulary(str(model_file))
    data = model_file.read_bytes()
    local = (
        Path(tempfile.gettempdir())
        / "tpu_train-tokenizers"
        / f"{hashlib.sha256(data).hexdigest()}.model"
    )
    if not local.exists():
        local.parent.mkdir(parents=True, exist_ok=True)
        partial = local.with_name(f"{local.name}.{os.getpid()}.partial")
        partial.write_bytes(data)
        partial.replace(local)  # atomic: processes sharing the cache never see half a file
    return seqio.SentencePieceVocabulary(str(local))


def load_vocabulary(path: str | Path) -> seqio.Vocabulary:
    """The SeqIO vocabulary for a tokenizer path (local or `gs://`).

    A directory holding `tokenizer.json` -> `HfTokenizerVocabulary` (even when a `tokenizer.model`
    is there too: Hugging Face directories ship both and `tokenizer.json` is what AutoTokenizer
    loads); a directory holding only `tokenizer.model`, or a `.model` file ->
    `seqio.SentencePieceVocabulary`; a `.json` file -> `HfTokenizerVocabulary`. Anything else raises
    FileNotFoundError naming the path.

    Example:
        >>> load_vocabulary("data/tokenizer.model").vocab_size  # doctest: +SKIP
        32000
        >>> load_vocabulary("runs/empty")  # doctest: +SKIP
        Traceback (most recent call last):
        FileNotFoundError: runs/empty: no tokenizer.json or tokenizer.model in this directory
    """
    p = epath.Path(path)
    if p.is_dir():
        if (p / tokenizer_files.TOKENIZER_JSON).exists():
            return HfTokenizerVocabulary(p)
        if (p / tokenizer_files.SENTENCEPIECE_MODEL).exists():
            return _sentencepiece_vocabulary(p / tokenizer_files.SENTENCEPIECE_MODEL)
        raise FileNotFoundError(
            f"{path}: no {tokenizer_files.TOKENIZER_JSON} or {tokenizer_files.SENTENCEPIECE_MODEL} in this directory"
        )
    if p.exists():
        if p.name.endswith(".json"):
            return HfTokenizerVocabulary(p)
        if p.name.endswith(".model"):
            return _sentencepiece_vocabulary(p)
    raise FileNotFoundError(
        f"{path}: not a tokenizer; expected a directory holding {tokenizer_files.TOKENIZER_JSON} or "
        f"{tokenizer_files.SENTENCEPIECE_MODEL}, a tokenizer .json file or a sentencepiece .model file"
    )
