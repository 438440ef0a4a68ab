"""What to sample (`SamplingParams`) and what came back (`Completion`).

Filters compose in a fixed order: logits are divided by `temperature`, then cut to the `top_k` most likely
tokens, then to the smallest prefix of those whose probability mass reaches `top_p`, and a token is drawn
from what is left. `temperature=0` means greedy (argmax) and ignores the other two.

Example:
    >>> greedy = SamplingParams(max_new_tokens=64)
    >>> greedy.greedy
    True
    >>> nucleus = SamplingParams(temperature=0.7, top_k=40, top_p=0.9, seed=3, stop=("### Instruction",))
    >>> nucleus.greedy, nucleus.top_k, nucleus.stop
    (False, 40, ('### Instruction',))
"""

from __future__ import annotations

import dataclasses

# Why a sequence stopped. Codes are what the device loop stores per row; 0 means "still running".
EOS = "eos"
STOP_STRING = "stop_string"
MAX_NEW_TOKENS = "max_new_tokens"
CACHE_FULL = "cache_full"
STOP_REASONS = (EOS, STOP_STRING, MAX_NEW_TOKENS, CACHE_FULL)
RUNNING_CODE = 0
REASON_CODES = {EOS: 1, STOP_STRING: 2, MAX_NEW_TOKENS: 3, CACHE_FULL: 4}
REASON_NAMES = {code: name for name, code in REASON_CODES.items()}


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How to pick each next token and when to stop.

    Attributes:
        max_new_tokens: most tokens generated per prompt (EOS included when it is generated).
        temperature: softmax temperature; 0 means greedy decoding.
        top_k: keep only the k most likely tokens (0: no limit).
        top_p: keep the smallest set of most likely tokens whose probability reaches top_p (1.0: no limit).
        seed: seeds the random draws; the same seed, prompts and batch give the same samples.
        stop: strings that end a sequence when they appear in its decoded output; the output is cut just
            before the first occurrence (needs a sampler built with a `detokenize` function).
    """

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0: off), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        if any(not s for s in self.stop):
            raise ValueError("stop strings must be non-empty")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclasses.dataclass(frozen=True)
class Completion:
    """One prompt's result.

    Attributes:
        tokens: the generated token ids (EOS included when it ended the sequence; for a stop string, up to
            and including the token that completed it).
        stop_reason: one of STOP_REASONS.
        text: the decoded output with any stop string and what follows removed (None without a detokenizer).
    """

    tokens: tuple[int, ...]
    stop_reason: str
    text: str | None = None
