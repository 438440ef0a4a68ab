"""Text in and out: a sentencepiece tokenizer and the prompt templates.

`SentencePieceTokenizer` wraps a `tokenizer.model` (the file a workdir or a Hugging Face Llama directory
carries). `encode` prepends BOS when the model defines one (Llama's convention) and never appends EOS;
`decode` drops control tokens (BOS, EOS), so a completion's EOS never reaches its text.

Example:
    >>> apply_template("What is 2 + 3?", "alpaca").splitlines()[-3:]
    ['What is 2 + 3?', '', '### Response:']
    >>> apply_template("What is 2 + 3?", "none")
    'What is 2 + 3?'
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from tpu_train.data.prompts import PROMPT_TEMPLATE, STOP_STRINGS

# The training data's prompt format (tpu_train.data.prompts), under the names the sampler's users know.
ALPACA_TEMPLATE = PROMPT_TEMPLATE
ALPACA_STOP = STOP_STRINGS
TEMPLATES = {"none": "{instruction}", "alpaca": ALPACA_TEMPLATE}


def apply_template(prompt: str, template: str = "none") -> str:
    """`prompt` wrapped in the named template (one of TEMPLATES)."""
    if template not in TEMPLATES:
        raise ValueError(f"unknown template {template!r}; choose one of {sorted(TEMPLATES)}")
    return TEMPLATES[template].format(instruction=prompt)


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
