"""Text in and out: the tokenizers the sampler encodes prompts and decodes completions with.

`SentencePieceTokenizer` wraps a `tokenizer.model` (the file a workdir or a Hugging Face Llama directory
carries). `encode` prepends BOS when the model defines one (Llama's convention) and never appends EOS;
`decode` drops control tokens (BOS, EOS), so a completion's EOS never reaches its text.

`HfTokenizer` wraps a Hugging Face `tokenizer.json` directory. `encode(add_bos=True)` prepends
exactly the ids the tokenizer's own config puts before a text (Llama 3: `<|begin_of_text|>`;
SmolLM2: none), the same `prompt_prefix_ids` the training tasks prepend; `decode` drops special
tokens. The training vocabulary (`tpu_train.data.vocabulary.HfTokenizerVocabulary`) wraps it, so
both tokenize alike; this module imports neither TensorFlow nor SeqIO.

`load_tokenizer(directory)` picks `tokenizer.json` over `tokenizer.model`; None when neither is
there.

Example:
    >>> tok = load_tokenizer("runs/smollm2")  # doctest: +SKIP
    >>> tok.encode("<|im_start|>user"), tok.bos_id, tok.eos_ids  # doctest: +SKIP
    ([1, 4093], None, (2,))

Prompt formats (Alpaca, chat) live in `tpu_train.data.prompts`, shared with the training data.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from etils import epath

from tpu_train import tokenizer_files

if TYPE_CHECKING:
    import tokenizers


class Tokenizer(Protocol):
    """What the sampler needs from a tokenizer."""

    @property
    def eos_ids(self) -> tuple[int, ...]: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class SentencePieceTokenizer:
    """A sentencepiece model file, used directly through the `sentencepiece` library."""

    def __init__(self, path: str | Path | epath.Path):
        import sentencepiece as spm

        path = epath.Path(path)  # local or gs://: the model is read as bytes
        if not path.exists():
            raise FileNotFoundError(f"{path}: no sentencepiece model")
        self.path = path
        self.sp = spm.SentencePieceProcessor(model_proto=path.read_bytes())

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


# Any text works as a probe: post-processors put ids around a text's ids and never change them.
_PROBE = "Hello world 123"


def token_content(value: Any) -> str | None:
    """The token string of a `tokenizer_config.json` entry: a plain string, or an AddedToken dict
    (`{"__type": "AddedToken", "content": "</s>", ...}`) as older transformers versions wrote them.

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


def _find_tokenizer_json(path: str | Path | epath.Path) -> epath.Path | None:
    p = epath.Path(path)
    if p.is_dir():
        candidate = p / tokenizer_files.TOKENIZER_JSON
        return candidate if candidate.exists() else None
    return p if p.name.endswith(".json") and p.exists() else None


class HfTokenizer:
    """A Hugging Face `tokenizer.json` (+ `tokenizer_config.json`, `special_tokens_map.json` next to
    it, both optional) through the `tokenizers` library; `path` is its directory or the JSON file.

    Ids match `transformers.AutoTokenizer` on the same directory: `encode(text)` equals its
    `encode(text)`, `encode(text, add_bos=False)` its `encode(text, add_special_tokens=False)` and
    `decode(ids)` its `decode(ids, skip_special_tokens=True)` (transformers 5; `add_bos_token`,
    below, is the one exception). Special-token strings in a text (a chat template's
    `<|im_start|>`) encode to their ids, as AutoTokenizer does by default.

    `prefix_ids` is what the tokenizer's own config puts before a text: the ids its post-processor
    adds in front (Llama 3's TemplateProcessing: `<|begin_of_text|>`; SmolLM2's ByteLevel: none),
    with BOS put first or taken off where `tokenizer_config.json` sets `add_bos_token` (as
    transformers 4's Llama tokenizers did; transformers 5.24's AutoTokenizer ignores the flag). The
    training vocabulary (`tpu_train.data.vocabulary.HfTokenizerVocabulary`) wraps this class, so
    training rows and sampled prompts start alike.

    The files are held as text and the Rust tokenizer is rebuilt lazily, so pickles and copies carry
    the contents, not the path; `digest` hashes them. No TensorFlow or SeqIO is imported.

    Example:
        >>> tok = HfTokenizer("runs/llama3")  # doctest: +SKIP
        >>> tok.encode("Hi"), tok.encode("Hi", add_bos=False), tok.eos_ids  # doctest: +SKIP
        ([128000, 13347], [13347], (128001,))
        >>> tok.decode([128000, 13347, 128001])  # doctest: +SKIP
        'Hi'
    """

    def __init__(self, path: str | Path | epath.Path):
        json_path = _find_tokenizer_json(path)
        if json_path is None:
            raise FileNotFoundError(
                f"{path}: no {tokenizer_files.TOKENIZER_JSON} (a directory or a .json file)"
            )
        self.path = json_path
        self.tokenizer_json = json_path.read_text()
        self.config = _read_json(json_path.parent / tokenizer_files.TOKENIZER_CONFIG)
        self.special_tokens_map = _read_json(json_path.parent / tokenizer_files.SPECIAL_TOKENS_MAP)
        self._backend: tokenizers.Tokenizer | None = None
        self._info: dict[str, Any] | None = None
        # Resolve every id now: a misconfigured directory fails here, not inside a tf.data map.
        self._resolve()

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_backend", "_info")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._backend = None
        self._info = None

    @property
    def backend(self) -> tokenizers.Tokenizer:
        """The `tokenizers.Tokenizer`, built on first use."""
        if self._backend is None:
            import tokenizers

            tok = tokenizers.Tokenizer.from_str(self.tokenizer_json)
            # AutoTokenizer's default (split_special_tokens=False): "<|im_start|>" in a text is
            # one id, not the pieces of its characters.
            tok.encode_special_tokens = False
            self._backend = tok
        return self._backend

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

    def _token_id(self, name: str) -> int | None:
        """The id of a `bos_token` / `eos_token` / ... entry of tokenizer_config.json, else of
        special_tokens_map.json; None when neither names one."""
        value = self.config.get(name)
        if value is None:
            value = self.special_tokens_map.get(name)
        content = token_content(value)
        if content is None:
            return None
        token_id = self.backend.token_to_id(content)
        if token_id is None:
            raise ValueError(f"{self.path}: {name} {content!r} is not in the vocabulary")
        return token_id

    def _post_processor_prefix(self) -> list[int]:
        tok = self.backend
        with_special = tok.encode(_PROBE, add_special_tokens=True).ids
        plain = tok.encode(_PROBE, add_special_tokens=False).ids
        for start in range(len(with_special) - len(plain) + 1):
            if with_special[start : start + len(plain)] == plain:
                return with_special[:start]
        raise ValueError(f"{self.path}: the post-processor changes a text's own ids; unsupported")

    def _resolve(self) -> dict[str, Any]:
        if self._info is not None:
            return self._info
        tok = self.backend
        bos = self._token_id("bos_token")
        prefix = self._post_processor_prefix()
        # An explicit add_bos_token overrides the post-processor about BOS (transformers 4's Llama
        # fast tokenizers rebuilt their post-processor from it; transformers 5 reads only
        # tokenizer.json, and the two agree for files transformers saved itself).
        add_bos = self.config.get("add_bos_token")
        if add_bos is True:
            if bos is None:
                raise ValueError(f"{self.path}: add_bos_token is true but no bos_token is set")
            if prefix[:1] != [bos]:
                prefix.insert(0, bos)
        elif add_bos is False and bos is not None and prefix[:1] == [bos]:
            prefix.pop(0)
        unk = self._token_id("unk_token")
        if unk is None:
            model_unk = getattr(tok.model, "unk_token", None)
            unk = None if model_unk is None else tok.token_to_id(model_unk)
        ids = tok.get_vocab(with_added_tokens=True).values()
        self._info = {
            "eos": self._token_id("eos_token"),
            "pad": self._token_id("pad_token"),
            "unk": unk,
            "prefix": tuple(prefix),
            # Added tokens may leave gaps above the base vocabulary; the size covers the largest id.
            "size": max(tok.get_vocab_size(with_added_tokens=True), max(ids, default=-1) + 1),
        }
        return self._info

    @property
    def vocab_size(self) -> int:
        """Including added tokens (Llama 3: 128256)."""
        return self._resolve()["size"]

    @property
    def prefix_ids(self) -> tuple[int, ...]:
        """What `encode(add_bos=True)` puts before a text's ids: (128000,) for Llama 3, () for
        SmolLM2. Never what a post-processor appends after the text."""
        return self._resolve()["prefix"]

    @property
    def bos_id(self) -> int | None:
        """The BOS `encode` prepends (None when the tokenizer adds none, even if it names one)."""
        return self.prefix_ids[0] if self.prefix_ids else None

    @property
    def eos_id(self) -> int | None:
        """`eos_token`'s id (tokenizer_config.json, else special_tokens_map.json), None if unset."""
        return self._resolve()["eos"]

    @property
    def eos_ids(self) -> tuple[int, ...]:
        return () if self.eos_id is None else (self.eos_id,)

    @property
    def unk_id(self) -> int | None:
        return self._resolve()["unk"]

    @property
    def pad_token_id(self) -> int | None:
        """The tokenizer's own pad token (informational: SeqIO pads with id 0 regardless)."""
        return self._resolve()["pad"]

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        ids = self.backend.encode(text, add_special_tokens=False).ids
        return [*self.prefix_ids, *ids] if add_bos else ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """`encode(text, add_bos=False)` for each text, in one call (the Rust side parallelizes)."""
        encodings = self.backend.encode_batch(list(texts), add_special_tokens=False)
        return [e.ids for e in encodings]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`, special tokens dropped, as are ids outside the vocabulary (a model's
        padded embedding rows). No `clean_up_tokenization_spaces`: transformers 5 skips it for BPE
        tokenizers, where it would corrupt code (" ." -> ".")."""
        size = self.vocab_size
        kept = [int(i) for i in ids if 0 <= int(i) < size]
        return self.backend.decode(kept, skip_special_tokens=True)


def load_tokenizer(directory: str | Path | epath.Path) -> Tokenizer | None:
    """The tokenizer a model or workdir directory carries: `tokenizer.json` -> `HfTokenizer` (what
    AutoTokenizer loads, preferred when both are there), else `tokenizer.model` ->
    `SentencePieceTokenizer`, else None.

    Example:
        >>> load_tokenizer("data")  # doctest: +SKIP
        <tpu_train.sampling.tokenizer.SentencePieceTokenizer object at ...>
        >>> load_tokenizer("/tmp/empty") is None  # doctest: +SKIP
        True
    """
    directory = epath.Path(directory)  # local or gs://
    if (directory / tokenizer_files.TOKENIZER_JSON).exists():
        return HfTokenizer(directory)
    if (directory / tokenizer_files.SENTENCEPIECE_MODEL).exists():
        return SentencePieceTokenizer(directory / tokenizer_files.SENTENCEPIECE_MODEL)
    return None
