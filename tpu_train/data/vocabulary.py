"""SeqIO vocabularies for training data: sentencepiece `tokenizer.model` or Hugging Face `tokenizer.json`.

`load_vocabulary(path)` picks the vocabulary for a tokenizer path: a directory with `tokenizer.json`
gives `HfTokenizerVocabulary` (preferred when a `tokenizer.model` sits next to it), one with
`tokenizer.model` (or a `.model` file) gives `seqio.SentencePieceVocabulary`.

BOS: SeqIO never adds one; the tasks prepend `prompt_prefix_ids(vocab)` to `inputs`. BOS is added only
where the tokenizer's own config says so: sentencepiece models with a BOS id (Llama 1/2), and
`tokenizer.json` tokenizers whose post-processor puts ids before a text (Llama 3's
`<|begin_of_text|>`; SmolLM2 adds none), or whose `tokenizer_config.json` sets `add_bos_token`.
The sampler (`tpu_train.sampling.tokenizer`) applies the same rule through the same TF-free code
(`tpu_train.data.hf_tokenizer_files`), so training rows start with the ids the sampler feeds.

EOS and padding: `targets` get the tokenizer's `eos_token` id through `seqio.Feature(add_eos=True)`.
SeqIO pads with id 0 whatever the tokenizer's pad token is, and a tokenizer whose pad token equals its
EOS (SmolLM2: pad = eos = `<|im_end|>` = 2, id 0 = `<|endoftext|>`) changes nothing: padding is never
written as id 2, so EOS stays a loss target (weight 1) in
`seqio.PrefixLMFeatureConverter(loss_on_targets_only=True)`. What id 0 does affect: SeqIO's converters
take `id != 0` as "not padding" in unpacked rows, so a real token with id 0 (SmolLM2's
`<|endoftext|>`, Llama 3's "!") inside a row is mistaken for padding; `tpu_train.data.pipeline` tells
padding apart by segment ids instead.

Example:
    >>> vocab = load_vocabulary("data/tokenizer.model")  # doctest: +SKIP
    >>> prompt_prefix_ids(vocab)  # doctest: +SKIP
    (1,)
    >>> vocab = load_vocabulary("runs/smollm2")  # doctest: +SKIP
    >>> vocab.encode("<|im_start|>user"), prompt_prefix_ids(vocab), vocab.eos_id  # doctest: +SKIP
    ([1, 4093], (), 2)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import seqio
import tensorflow as tf
from etils import epath

from tpu_train.data.hf_tokenizer_files import (
    SENTENCEPIECE_MODEL,
    TOKENIZER_JSON,
    HfTokenizerFiles,
)

__all__ = ["HfTokenizerVocabulary", "load_vocabulary", "prompt_prefix_ids"]


class HfTokenizerVocabulary(seqio.Vocabulary):
    """A Hugging Face `tokenizer.json` as a SeqIO vocabulary, through the `tokenizers` library.

    `encode` adds no special tokens (SeqIO appends EOS itself; BOS comes from `prompt_prefix_ids`),
    but special-token strings in a text map to their ids as AutoTokenizer does, so a chat prompt's
    `<|im_start|>` is one token. `decode` drops special tokens. `encode_tf` / `decode_tf` run the same
    Python tokenizer inside tf.data graphs through `tf.numpy_function`, so they give exactly the ids
    of `encode` (such graphs cannot be serialized, e.g. for tf.data service). Equality and hashing go
    by the files' contents; pickles and copies carry the contents, not the path.

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
        self.files = HfTokenizerFiles(path)
        super().__init__(extra_ids=0)

    @property
    def bos_id(self) -> int | None:
        """The BOS this tokenizer puts before a text (first of `prompt_prefix_ids`), None if none."""
        prefix = self.files.prefix_ids
        return prefix[0] if prefix else None

    @property
    def eos_id(self) -> int | None:
        return self.files.eos_id

    @property
    def unk_id(self) -> int | None:
        return self.files.unk_id

    @property
    def _base_vocab_size(self) -> int:
        return self.files.vocab_size

    def _encode(self, s: str) -> Sequence[int]:
        return self.files.encode(s)

    def _decode(self, ids: Iterable[int]) -> str:
        return self.files.decode(ids)

    # --- TensorFlow: the Python tokenizer behind tf.numpy_function ---------------------------------

    def _encode_np(self, texts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = self.files.encode_batch([t.decode("utf-8") for t in texts.tolist()])
        values = np.asarray([i for row in rows for i in row], dtype=np.int32)
        return values, np.asarray([len(row) for row in rows], dtype=np.int64)

    def _encode_tf(self, s: tf.Tensor) -> tf.Tensor | tf.RaggedTensor:
        """A scalar string -> 1-D int32 ids (what seqio's tokenize maps per example); a 1-D batch of
        strings -> a 2-D int32 RaggedTensor, as `seqio.SentencePieceVocabulary` returns."""
        s = tf.convert_to_tensor(s, dtype=tf.string)
        rank = s.shape.rank
        if rank not in (0, 1):
            raise ValueError(f"encode_tf takes a scalar or 1-D string tensor, got shape {s.shape}")
        values, lengths = tf.numpy_function(
            self._encode_np, [tf.reshape(s, [-1])], [tf.int32, tf.int64], stateful=False
        )
        # numpy_function loses static shapes; seqio's length checks and padding need rank 1.
        values.set_shape([None])
        lengths.set_shape([None])
        if rank == 0:
            return values
        return tf.RaggedTensor.from_row_lengths(values, lengths, validate=False)

    def _decode_np(self, ids: np.ndarray, stop_at_eos: bool) -> np.ndarray:
        eos = self.eos_id
        out = []
        for row in ids.tolist():  # already [rows, length]
            if stop_at_eos and eos is not None and eos in row:
                row = row[: row.index(eos)]
            out.append(self.files.decode(row).encode("utf-8"))
        return np.asarray(out, dtype=object)

    def _detokenize_tf(self, ids: tf.Tensor, stop_at_eos: bool) -> tf.Tensor:
        ids = tf.convert_to_tensor(ids)
        rank = ids.shape.rank
        if rank not in (1, 2):
            raise ValueError(f"decode_tf takes 1-D or 2-D ids, got shape {ids.shape}")
        rows = tf.reshape(tf.cast(ids, tf.int32), [-1, tf.shape(ids)[-1]])
        texts = tf.numpy_function(
            lambda x: self._decode_np(x, stop_at_eos), [rows], tf.string, stateful=False
        )
        texts.set_shape([None])
        return texts[0] if rank == 1 else texts

    def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
        """1-D int ids -> a scalar string, 2-D -> 1-D strings; special tokens dropped."""
        return self._detokenize_tf(ids, stop_at_eos=False)

    def decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
        """Like `seqio.Vocabulary.decode_tf` (text up to the first EOS), but cutting at EOS instead of
        overwriting what follows with id 0: here id 0 is usually a real token ("!" in Llama 3)."""
        if ids.shape == (0,):
            return tf.constant(b"", dtype=tf.string)
        return self._detokenize_tf(ids, stop_at_eos=True)

    # --- identity -----------------------------------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HfTokenizerVocabulary) and self.files.digest == other.files.digest

    def __hash__(self) -> int:
        # seqio.Feature is a frozen dataclass; defining __eq__ alone would make Features unhashable.
        return hash(self.files.digest)

    def __str__(self) -> str:
        return f"HfTokenizerVocabulary(file={self.files.source}, sha256={self.files.digest[:12]})"

    __repr__ = __str__


def prompt_prefix_ids(vocab: seqio.Vocabulary) -> tuple[int, ...]:
    """The ids a prompt starts with before its text, as the sampler encodes it.

    `HfTokenizerVocabulary`: what the tokenizer's config puts there (Llama 3: `<|begin_of_text|>`;
    SmolLM2: nothing). `seqio.SentencePieceVocabulary`: (bos,) when the model has a BOS id >= 0 (the
    Llama convention). Any other vocabulary: ().

    Example:
        >>> prompt_prefix_ids(seqio.ByteVocabulary())
        ()
        >>> prompt_prefix_ids(seqio.SentencePieceVocabulary("data/tokenizer.model"))  # doctest: +SKIP
        (1,)
    """
    if isinstance(vocab, HfTokenizerVocabulary):
        return vocab.files.prefix_ids
    if isinstance(vocab, seqio.SentencePieceVocabulary):
        bos = vocab.bos_id
        return (int(bos),) if bos is not None and bos >= 0 else ()
    return ()


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
        if (p / TOKENIZER_JSON).exists():
            return HfTokenizerVocabulary(p)
        if (p / SENTENCEPIECE_MODEL).exists():
            return seqio.SentencePieceVocabulary(str(p / SENTENCEPIECE_MODEL))
        raise FileNotFoundError(
            f"{path}: no {TOKENIZER_JSON} or {SENTENCEPIECE_MODEL} in this directory"
        )
    if p.exists():
        if p.name.endswith(".json"):
            return HfTokenizerVocabulary(p)
        if p.name.endswith(".model"):
            return seqio.SentencePieceVocabulary(str(p))
    raise FileNotFoundError(
        f"{path}: not a tokenizer; expected a directory holding {TOKENIZER_JSON} or "
        f"{SENTENCEPIECE_MODEL}, a tokenizer .json file or a sentencepiece .model file"
    )
