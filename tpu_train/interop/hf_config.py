"""Hugging Face `config.json` <-> `LlamaConfig`.

Both config dialects are read: transformers 4 (`rope_theta`, `rope_scaling`, `torch_dtype`) and transformers 5
(`rope_parameters`, `dtype`). Exports write the version-4 keys, which every transformers release reads.
Anything this model cannot represent raises `UnsupportedCheckpointError` naming the offending key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tpu_train.model.config import LlamaConfig, RopeScaling


class UnsupportedCheckpointError(ValueError):
    """A Hugging Face checkpoint that tpu_train cannot load faithfully."""


def config_from_hf(
    hf: Mapping[str, Any], source: str = "config.json", **overrides: Any
) -> LlamaConfig:
    """Reads a transformers Llama config dict; `overrides` set tpu_train-only fields (dtypes, scan...)."""
    archs = hf.get("architectures") or []
    if hf.get("model_type") != "llama" or (archs and "LlamaForCausalLM" not in archs):
        raise UnsupportedCheckpointError(
            f"{source}: model_type={hf.get('model_type')!r}, architectures={archs}; only LlamaForCausalLM "
            "(model_type 'llama') is supported"
        )
    for key in ("attention_bias", "mlp_bias"):
        if hf.get(key):
            raise UnsupportedCheckpointError(f"{source}: {key}=true; biases are not supported")
    if hf.get("hidden_act", "silu") != "silu":
        raise UnsupportedCheckpointError(f"{source}: hidden_act={hf['hidden_act']!r}; only 'silu'")
    rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    theta = rope.get("rope_theta", hf.get("rope_theta", 10_000.0))
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type == "default":
        scaling = None
    elif rope_type == "llama3":
        try:
            scaling = RopeScaling(
                factor=float(rope["factor"]),
                low_freq_factor=float(rope["low_freq_factor"]),
                high_freq_factor=float(rope["high_freq_factor"]),
                original_max_position_embeddings=int(rope["original_max_position_embeddings"]),
            )
        except KeyError as e:
            raise UnsupportedCheckpointError(
                f"{source}: llama3 rope scaling lacks {e.args[0]!r}"
            ) from e
    else:
        raise UnsupportedCheckpointError(
            f"{source}: rope_scaling type {rope_type!r} is not supported (only default and llama3)"
        )
    heads = int(hf["num_attention_heads"])
    head_dim = hf.get("head_dim")
    fields: dict[str, Any] = dict(
        vocab_size=int(hf["vocab_size"]),
        hidden_size=int(hf["hidden_size"]),
        intermediate_size=int(hf["intermediate_size"]),
        num_layers=int(hf["num_hidden_layers"]),
        num_heads=heads,
        num_kv_heads=int(hf.get("num_key_value_heads") or heads),
        explicit_head_dim=int(head_dim)
        if head_dim and head_dim * heads != hf["hidden_size"]
        else None,
        max_seq_len=int(hf.get("max_position_embeddings", 4096)),
        rope_theta=float(theta),
        rope_scaling=scaling,
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
    )
    fields.update(overrides)
    return LlamaConfig(**fields)


def config_to_hf(cfg: LlamaConfig, dtype: str, **token_ids: int | None) -> dict[str, Any]:
    """A transformers `config.json` dict for `LlamaForCausalLM` (`token_ids`: bos/eos/pad_token_id)."""
    rope_scaling = None
    if cfg.rope_scaling is not None:
        s = cfg.rope_scaling
        rope_scaling = {
            "rope_type": "llama3",
            "factor": s.factor,
            "low_freq_factor": s.low_freq_factor,
            "high_freq_factor": s.high_freq_factor,
            "original_max_position_embeddings": s.original_max_position_embeddings,
        }
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": rope_scaling,
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
        "torch_dtype": dtype,
        "initializer_range": 0.02,
        "use_cache": True,
        **token_ids,
    }
