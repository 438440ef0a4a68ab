"""Text in and out: the tokenizers the sampler encodes prompts and decodes completions with.

`SentencePieceTokenizer` wraps a `tokenizer.model` (the file a workdir or a Hugging Face Llama directory
carries). `encode` prepends BOS when the model defines one (Llama's convention) and never appends EOS;
`decode` drops control tokens (BOS, EOS), so a completion's EOS never reaches its text.

`HfTokenizer` wraps a Hugging Face `tokenizer.json` directory. `encode(add_bos=True)` prepends exactly
the ids the tokenizer's own config puts before a text (Llama 3: `<|begin_of_text|>`; SmolLM2: none),
the same `prompt_prefix_ids` the training tasks prepend; `decode` drops special tokens. It shares its
logic with the training vocabulary through `tpu_train.data.hf_tokenizer_files`, which needs neither
TensorFlow nor SeqIO.

`load_tokenizer(directory)` picks `tokenizer.json` over `tokenizer.model`, None when neither is there.

Example:
    >>> tok = load_tokenizer("runs/smollm2")  # doctest: +SKIP
    >>> tok.encode("<|im_start|>user"), tok.bos_id, tok.eos_ids  # doctest: +SKIP
    ([1, 4093], None, (2,))

Prompt formats (Alpaca, chat) live in `tpu_train.data.prompts`, shared with the training data.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol


class Tokenizer(Protocol):
    """What the sampler needs from a tokenizer."""

    @property
    def eos_ids(self) -> tuple[int, ...]: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class SentencePieceTokenizer:
    """A sentencepiece model file, used directly through the `sentencepiece` library."""

    def __init__(self, path: str | Path):
        import sentencepiece as spm

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no sentencepiece model")
        self.path = path
        self.sp = spm.SentencePieceProcessor(model_file=str(path))

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    @property
    def bos_id(self) -> int | None:
        return None if self.sp.bos_id() < 0 else self.sp.bos_id()

    @property
    def eos_ids(self) -> tuple[int, ...]:
        return () if self.sp.eos_id() < 0 else (self.sp.eos_id(),)

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        ids = list(self.sp.encode(text))
        return [self.bos_id, *ids] if add_bos and self.bos_id is not None else ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.sp.decode([int(i) for i in ids])


class HfTokenizer:
    """A Hugging Face `tokenizer.json` (+ tokenizer_config.json) through the `tokenizers` library.

    Ids match `transformers.AutoTokenizer`: `encode(text)` equals its `encode(text)` and `decode(ids)`
    its `decode(ids, skip_special_tokens=True)`; special-token strings in a prompt (a chat template's
    `<|im_start|>`) encode to their ids.

    Example:
        >>> tok = HfTokenizer("runs/llama3")  # doctest: +SKIP
        >>> tok.encode("Hi"), tok.encode("Hi", add_bos=False), tok.eos_ids  # doctest: +SKIP
        ([128000, 13347], [13347], (128001,))
        >>> tok.decode([128000, 13347, 128001])  # doctest: +SKIP
        'Hi'
    """

    def __init__(self, path: str | Path):
        # TF-free: the sampler's import path stays free of TensorFlow and SeqIO.
        from tpu_train.data.hf_tokenizer_files import HfTokenizerFiles

        self.files = HfTokenizerFiles(path)
        self.path = Path(self.files.source)

    @property
    def vocab_size(self) -> int:
        return self.files.vocab_size

    @property
    def prefix_ids(self) -> tuple[int, ...]:
        """What `encode(add_bos=True)` puts before the text's ids."""
        return self.files.prefix_ids

    @property
    def bos_id(self) -> int | None:
        """The BOS `encode` prepends (None when the tokenizer adds none, even if it names one)."""
        return self.prefix_ids[0] if self.prefix_ids else None

    @property
    def eos_ids(self) -> tuple[int, ...]:
        eos = self.files.eos_id
        return () if eos is None else (eos,)

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        ids = self.files.encode(text)
        return [*self.prefix_ids, *ids] if add_bos else ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.files.decode(ids)


def load_tokenizer(directory: str | Path) -> Tokenizer | None:
    """The tokenizer a model or workdir directory carries: `tokenizer.json` -> `HfTokenizer` (what
    AutoTokenizer loads, preferred when both are there), else `tokenizer.model` ->
    `SentencePieceTokenizer`, else None.

    Example:
        >>> load_tokenizer("data")  # doctest: +SKIP
        <tpu_train.sampling.tokenizer.SentencePieceTokenizer object at ...>
        >>> load_tokenizer("/tmp/empty") is None  # doctest: +SKIP
        True
    """
    directory = Path(directory)
    if (directory / "tokenizer.json").exists():
        return HfTokenizer(directory)
    if (directory / "tokenizer.model").exists():
        return SentencePieceTokenizer(directory / "tokenizer.model")
    return None
