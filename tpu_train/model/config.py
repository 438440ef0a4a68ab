"""Llama-family model configuration and the named presets.

A `LlamaConfig` fully describes the architecture and how it is computed (dtypes, scan, remat, attention
kernel). It is a frozen dataclass so it can be hashed, compared and passed to `jax.jit` as a static value.

Example:
    >>> cfg = get_preset("llama2_7b")
    >>> cfg.num_heads, cfg.head_dim, cfg.num_kv_heads
    (32, 128, 32)
    >>> small = get_preset("tiny_gqa", compute_dtype="float32")
    >>> small.num_heads // small.num_kv_heads   # query heads per shared K/V head
    2
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

REMAT_POLICIES = ("none", "full", "save_dots", "save_dots_no_batch", "save_qkv_attn")
ATTENTION_IMPLS = ("xla", "splash")
# The weight matmuls LoRA can adapt, by their parameter (and Hugging Face module) names.
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LORA_BASE_QUANTIZATION = ("none", "int8", "nf4")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """Llama-3 frequency-dependent RoPE scaling (the `rope_type: llama3` of Hugging Face configs).

    Frequencies whose wavelength exceeds `original_max_position_embeddings / low_freq_factor` are divided by
    `factor`; those below `.../high_freq_factor` are kept; the band between is interpolated smoothly.
    """

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """Low-rank adapters on the weight matmuls (`tpu_train.model.lora`): y = x W + (alpha / rank) x A B.

    Attributes:
        rank: r, the adapters' inner width (> 0).
        alpha: scale numerator; the update is scaled by alpha / rank, as in the LoRA paper and PEFT.
        targets: which projections get adapters, names from LORA_TARGETS.
        quantize_base: "none", or "int8" / "nf4" (QLoRA): the frozen base projections are held quantized
            (by the qwix library) and dequantized where they are used.
    """

    rank: int
    alpha: float = 16.0
    targets: tuple[str, ...] = LORA_TARGETS
    quantize_base: str = "none"

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", tuple(self.targets))
        if self.rank <= 0:
            raise ValueError(f"lora rank={self.rank}; it must be > 0 (rank 0 means no LoRA)")
        unknown = sorted(set(self.targets) - set(LORA_TARGETS))
        if unknown or not self.targets:
            raise ValueError(
                f"lora targets {list(self.targets)}: unknown {unknown}; choose from {LORA_TARGETS}"
            )
        if self.quantize_base not in LORA_BASE_QUANTIZATION:
            raise ValueError(
                f"lora quantize_base={self.quantize_base!r}; choose one of {LORA_BASE_QUANTIZATION}"
            )

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Architecture and numerics of a Llama-family decoder.

    Attributes:
        vocab_size: number of token embeddings (and logits).
        hidden_size: width of the residual stream ("embed" axis).
        intermediate_size: width of the SwiGLU MLP ("mlp" axis).
        num_layers: decoder blocks.
        num_heads: query heads.
        num_kv_heads: key/value heads; query heads are grouped over them (GQA). Must divide `num_heads`.
        explicit_head_dim: per-head width when it is not hidden_size // num_heads (see `head_dim`).
        max_seq_len: longest sequence the model is meant for (checked by the data and training code).
        rope_theta: RoPE base.
        rope_scaling: Llama-3 RoPE scaling, or None.
        rms_norm_eps: epsilon inside RMSNorm.
        tie_embeddings: reuse the embedding table as the output projection.
        param_dtype: dtype parameters are stored in (fp32 master weights by default).
        compute_dtype: dtype of matmuls and activations; norms, softmax and logits stay float32.
        scan_layers: stack the layers and run them with `jax.lax.scan` (compile time flat in depth).
        remat_policy: what to keep for the backward pass, one of REMAT_POLICIES (see `llama.remat_policy`).
        attention: "xla" (plain dot-product attention; CPU/GPU/TPU) or "splash" (Pallas TPU kernel).
        attention_interpret: run the Pallas kernel in interpret mode (CPU tests, debugging).
        lora: low-rank adapters on a frozen base (LoraConfig), or None (every parameter trains).
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    explicit_head_dim: int | None = None
    max_seq_len: int = 4096
    rope_theta: float = 10_000.0
    rope_scaling: RopeScaling | None = None
    rms_norm_eps: float = 1e-5
    tie_embeddings: bool = False
    param_dtype: str = "float32"
    compute_dtype: str = "bfloat16"
    scan_layers: bool = True
    remat_policy: str = "none"
    attention: str = "xla"
    attention_interpret: bool = False
    lora: LoraConfig | None = None

    def __post_init__(self) -> None:
        if self.explicit_head_dim is None and self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}; "
                "set explicit_head_dim"
            )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}"
            )
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(f"remat_policy={self.remat_policy!r}; choose one of {REMAT_POLICIES}")
        if self.attention not in ATTENTION_IMPLS:
            raise ValueError(f"attention={self.attention!r}; choose one of {ATTENTION_IMPLS}")
        if isinstance(self.rope_scaling, Mapping):
            object.__setattr__(self, "rope_scaling", RopeScaling(**self.rope_scaling))
        if isinstance(self.lora, Mapping):
            object.__setattr__(self, "lora", LoraConfig(**self.lora))

    @property
    def head_dim(self) -> int:
        """Per-head width of queries, keys and values."""
        return self.explicit_head_dim or self.hidden_size // self.num_heads

    @property
    def num_query_groups(self) -> int:
        """Query heads that share one K/V head."""
        return self.num_heads // self.num_kv_heads

    def num_params(self) -> int:
        """Exact parameter count (embeddings and output head included)."""
        e, f, d = self.hidden_size, self.intermediate_size, self.head_dim
        attn = e * d * (2 * self.num_heads + 2 * self.num_kv_heads)
        layer = attn + 3 * e * f + 2 * e
        head = 0 if self.tie_embeddings else e * self.vocab_size
        return self.num_layers * layer + self.vocab_size * e + e + head

    def lora_params(self) -> int:
        """Adapter parameters (0 without LoRA): rank x (fan-in + fan-out) per adapted projection."""
        if self.lora is None:
            return 0
        e, f, d, h, k = (
            self.hidden_size,
            self.intermediate_size,
            self.head_dim,
            self.num_heads,
            self.num_kv_heads,
        )
        sizes = {
            "q_proj": e + h * d,
            "k_proj": e + k * d,
            "v_proj": e + k * d,
            "o_proj": h * d + e,
            "gate_proj": e + f,
            "up_proj": e + f,
            "down_proj": f + e,
        }
        return self.num_layers * self.lora.rank * sum(sizes[t] for t in self.lora.targets)

    def matmul_params(self) -> int:
        """Weights that take part in matmuls: all but the embedding lookup table (a tied output head
        still counts)."""
        e, v = self.hidden_size, self.vocab_size
        return self.num_params() - v * e + (e * v if self.tie_embeddings else 0)

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward = 3 x forward, a multiply-add = 2 FLOPs):

            6 * matmul_params  +  6 * num_layers * seq_len * num_heads * head_dim

        The second term is attention's q.k and p.v (12 * layers * seq_len * heads * head_dim for full
        attention, halved because causal attention needs only the lower triangle). This is the FLOP count
        of MFU (training/metrics.py) and of the planner. With LoRA the frozen base costs 4 per weight
        (forward and input gradient, no weight gradient) and the adapters 6 per parameter.

        >>> cfg = LlamaConfig(vocab_size=100, hidden_size=8, intermediate_size=16, num_layers=1,
        ...                   num_heads=2, num_kv_heads=2)
        >>> cfg.matmul_params(), cfg.flops_per_token(seq_len=10)
        (1464, 9264)
        """
        attention = 6 * self.num_layers * seq_len * self.num_heads * self.head_dim
        if self.lora is not None:
            # A frozen base has no weight gradient: its matmuls cost forward + input gradient (4N);
            # the adapters train fully (6 per parameter).
            return 4 * self.matmul_params() + 6 * self.lora_params() + attention
        return 6 * self.matmul_params() + attention

    def replace(self, **changes: Any) -> LlamaConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; `LlamaConfig.from_dict` inverts it."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LlamaConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown LlamaConfig field(s): {', '.join(unknown)}")
        return cls(**d)


_LLAMA2 = dict(vocab_size=32_000, rms_norm_eps=1e-5, rope_theta=10_000.0, max_seq_len=4096)

PRESETS: dict[str, LlamaConfig] = {
    "llama2_7b": LlamaConfig(
        **_LLAMA2, hidden_size=4096, intermediate_size=11_008, num_layers=32, num_heads=32, num_kv_heads=32
    ),
    "llama2_13b": LlamaConfig(
        **_LLAMA2, hidden_size=5120, intermediate_size=13_824, num_layers=40, num_heads=40, num_kv_heads=40
    ),
    "llama2_70b": LlamaConfig(
        **_LLAMA2, hidden_size=8192, intermediate_size=28_672, num_layers=80, num_heads=64, num_kv_heads=8
    ),
    "codellama_7b": LlamaConfig(
        vocab_size=32_016,
        hidden_size=4096,
        intermediate_size=11_008,
        num_layers=32,
        num_heads=32,
        num_kv_heads=32,
        max_seq_len=16_384,
        rope_theta=1_000_000.0,
    ),
    "llama3_8b": LlamaConfig(
        vocab_size=128_256,
        hidden_size=4096,
        intermediate_size=14_336,
        num_layers=32,
        num_heads=32,
        num_kv_heads=8,
        max_seq_len=131_072,
        rope_theta=500_000.0,
        rope_scaling=RopeScaling(),
    ),
    # Tiny shapes for tests: a few hundred thousand parameters, compile in seconds on CPU.
    "tiny": LlamaConfig(
        vocab_size=512, hidden_size=64, intermediate_size=172, num_layers=2, num_heads=4, num_kv_heads=4,
        max_seq_len=256,
    ),
    "tiny_gqa": LlamaConfig(
        vocab_size=512, hidden_size=64, intermediate_size=172, num_layers=2, num_heads=4, num_kv_heads=2,
        max_seq_len=256,
    ),
    "tiny_llama3": LlamaConfig(
        vocab_size=512, hidden_size=64, intermediate_size=172, num_layers=2, num_heads=4, num_kv_heads=2,
        max_seq_len=256, rope_theta=500_000.0,
        rope_scaling=RopeScaling(factor=8.0, original_max_position_embeddings=64),
    ),
}  # fmt: skip


def get_preset(name: str, **overrides: Any) -> LlamaConfig:
    """Returns the named preset with `overrides` applied (e.g. `compute_dtype="float32"`)."""
    if name not in PRESETS:
        raise KeyError(f"unknown model preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    return PRESETS[name].replace(**overrides)
