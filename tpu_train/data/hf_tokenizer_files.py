"""Hugging Face `tokenizer.json` directories read without TensorFlow: the logic training and sampling share.

`HfTokenizerFiles` reads `tokenizer.json` plus the optional `tokenizer_config.json` and
`special_tokens_map.json` next to it, and answers what both sides need: ids without special tokens
added, text with special tokens dropped, the EOS / UNK / pad ids, the vocabulary size and the ids the
tokenizer itself puts before a text (`prefix_ids`). `tpu_train.data.vocabulary.HfTokenizerVocabulary`
(SeqIO, TensorFlow) and `tpu_train.sampling.tokenizer.HfTokenizer` (the sampler) both wrap it, so a
prompt is tokenized the same way in training and in sampling.

This module imports neither TensorFlow nor JAX; the `tokenizers` library is imported on first use.

Example:
    >>> files = HfTokenizerFiles("runs/smollm2")  # doctest: +SKIP
    >>> files.encode("<|im_start|>user")  # doctest: +SKIP
    [1, 4093]
    >>> files.prefix_ids, files.eos_id  # doctest: +SKIP
    ((), 2)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from etils import epath

if TYPE_CHECKING:
    import tokenizers

TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
SENTENCEPIECE_MODEL = "tokenizer.model"

# Any text works as a probe: post-processors insert ids around the text's ids, they never change them.
_PROBE = "Hello world 123"


def find_tokenizer_json(path: str | Path | epath.Path) -> epath.Path | None:
    """`path` itself if it is a `*.json` file, `path/tokenizer.json` if `path` is a directory holding
    one, else None. `gs://` paths work through `etils.epath`.

    Example:
        >>> find_tokenizer_json("runs/smollm2")  # doctest: +SKIP
        PosixGPath('runs/smollm2/tokenizer.json')
    """
    p = epath.Path(path)
    if p.is_dir():
        candidate = p / TOKENIZER_JSON
        return candidate if candidate.exists() else None
    return p if p.name.endswith(".json") and p.exists() else None


def token_content(value: Any) -> str | None:
    """The token string of a `tokenizer_config.json` entry: a plain string, or an AddedToken dict
    (`{"content": "<|im_end|>", "__type": "AddedToken", ...}`) as older transformers wrote them.

    Example:
        >>> token_content({"__type": "AddedToken", "content": "</s>"}), token_content("<s>")
        ('</s>', '<s>')
        >>> token_content(None) is None
        True
    """
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return value["content"]
    raise ValueError(f"unrecognised special-token entry {value!r}")


def _read_json(path: epath.Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


class HfTokenizerFiles:
    """A `tokenizer.json` (+ optional config files) held as text; the `tokenizers.Tokenizer` is built
    lazily and dropped on pickling, so copies and pickles carry only the file contents.

    Args:
        path: a directory holding `tokenizer.json`, or the path of a tokenizer JSON file (whose
            directory is then searched for the config files).
    """

    def __init__(self, path: str | Path | epath.Path):
        json_path = find_tokenizer_json(path)
        if json_path is None:
            raise FileNotFoundError(f"{path}: no {TOKENIZER_JSON} (a directory or a .json file)")
        self.source = str(json_path)
        self.tokenizer_json = json_path.read_text()
        self.config = _read_json(json_path.parent / TOKENIZER_CONFIG)
        self.special_tokens_map = _read_json(json_path.parent / SPECIAL_TOKENS_MAP)
        self._tokenizer: tokenizers.Tokenizer | None = None
        self._info: dict[str, Any] | None = None
        # Resolve every id now so a misconfigured directory fails at load time, not mid-pipeline.
        _ = self.prefix_ids

    # Pickling / copying: the Rust tokenizer is rebuilt from the text on the other side.
    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_tokenizer", "_info")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._tokenizer = None
        self._info = None

    @property
    def digest(self) -> str:
        """sha256 over the three files' contents: equal digests tokenize identically."""
        h = hashlib.sha256()
        for part in (
            self.tokenizer_json,
            json.dumps(self.config, sort_keys=True),
            json.dumps(self.special_tokens_map, sort_keys=True),
        ):
            h.update(part.encode())
            h.update(b"\0")
        return h.hexdigest()

    @property
    def tokenizer(self) -> tokenizers.Tokenizer:
        if self._tokenizer is None:
            import tokenizers

            tok = tokenizers.Tokenizer.from_str(self.tokenizer_json)
            # As AutoTokenizer does by default (split_special_tokens=False): special-token strings in
            # a text (a chat template's "<|im_start|>") become their ids instead of being split.
            tok.encode_special_tokens = False
            self._tokenizer = tok
        return self._tokenizer

    def _token_id(self, name: str) -> int | None:
        """The id of `bos_token` / `eos_token` / ... from tokenizer_config, else special_tokens_map."""
        value = self.config.get(name)
        if value is None:
            value = self.special_tokens_map.get(name)
        content = token_content(value)
        if content is None:
            return None
        token_id = self.tokenizer.token_to_id(content)
        if token_id is None:
            raise ValueError(f"{self.source}: {name} {content!r} is not in the vocabulary")
        return token_id

    def _resolve(self) -> dict[str, Any]:
        if self._info is not None:
            return self._info
        tok = self.tokenizer
        bos = self._token_id("bos_token")
        unk = self._token_id("unk_token")
        if unk is None:
            model_unk = getattr(tok.model, "unk_token", None)
            unk = None if model_unk is None else tok.token_to_id(model_unk)
        with_special = tok.encode(_PROBE, add_special_tokens=True).ids
        plain = tok.encode(_PROBE, add_special_tokens=False).ids
        start = next(
            (
                i
                for i in range(len(with_special) - len(plain) + 1)
                if with_special[i : i + len(plain)] == plain
            ),
            None,
        )
        if start is None:
            raise ValueError(f"{self.source}: the post-processor changes a text's ids; unsupported")
        prefix = list(with_special[:start])
        # An explicit add_bos_token in the config wins over the post-processor (transformers 4's Llama
        # fast tokenizers rebuild their post-processor from it; where it is absent the post-processor
        # alone decides, as AutoTokenizer does).
        add_bos = self.config.get("add_bos_token")
        if add_bos is True:
            if bos is None:
                raise ValueError(f"{self.source}: add_bos_token is true but no bos_token is set")
            if prefix[:1] != [bos]:
                prefix.insert(0, bos)
        elif add_bos is False and bos is not None and prefix[:1] == [bos]:
            prefix.pop(0)
        vocab = tok.get_vocab(with_added_tokens=True)
        self._info = {
            "eos": self._token_id("eos_token"),
            "pad": self._token_id("pad_token"),
            "unk": unk,
            "prefix": tuple(prefix),
            # Added tokens may leave gaps above the base vocabulary; the size covers the largest id.
            "size": max(tok.get_vocab_size(with_added_tokens=True), max(vocab.values()) + 1),
        }
        return self._info

    @property
    def eos_id(self) -> int | None:
        """`eos_token`'s id (tokenizer_config.json, else special_tokens_map.json), None if unset."""
        return self._resolve()["eos"]

    @property
    def pad_token_id(self) -> int | None:
        """The tokenizer's own pad token (informational: SeqIO pads with 0 regardless)."""
        return self._resolve()["pad"]

    @property
    def unk_id(self) -> int | None:
        return self._resolve()["unk"]

    @property
    def prefix_ids(self) -> tuple[int, ...]:
        """The ids the tokenizer's own config puts before every text: (128000,) for Llama 3's
        `<|begin_of_text|>`, () for SmolLM2. Never includes what it may append after the text."""
        return self._resolve()["prefix"]

    @property
    def vocab_size(self) -> int:
        """Including added tokens (Llama 3: 128256)."""
        return self._resolve()["size"]

    def encode(self, text: str) -> list[int]:
        """Ids of `text` with no special tokens added; special-token strings in it map to their ids."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        encodings = self.tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [e.ids for e in encodings]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids` with special tokens dropped. Ids outside the vocabulary (a model's padded
        embedding rows) are dropped too. transformers 5 skips `clean_up_tokenization_spaces` for BPE
        tokenizers; so does this (it would corrupt " ." in code)."""
        size = self.vocab_size
        return self.tokenizer.decode(
            [int(i) for i in ids if 0 <= int(i) < size], skip_special_tokens=True
        )
