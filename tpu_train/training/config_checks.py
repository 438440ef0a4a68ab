"""Checks run before anything is compiled, each failing with a message that says what to change."""

from __future__ import annotations

import math
from pathlib import Path

import ml_collections

from tpu_train.data.prompts import FORMAT_NAMES
from tpu_train.model.config import LORA_TARGETS, LlamaConfig, LoraConfig
from tpu_train.sharding import resolve_mesh_shape


class ConfigError(ValueError):
    """A training config that cannot run as written."""


def lora_config(section: ml_collections.ConfigDict | None) -> LoraConfig | None:
    """The `lora` section as a LoraConfig; None when absent or rank 0 (every parameter trains)."""
    if section is None or section.get("rank", 0) == 0:
        return None
    try:
        return LoraConfig(
            rank=section.rank,
            alpha=float(section.get("alpha", 16.0)),
            targets=tuple(section.get("targets", LORA_TARGETS)),
            quantize_base=section.get("quantize_base", "none"),
        )
    except (ValueError, TypeError) as e:
        raise ConfigError(f"config.lora: {e}") from e


def check_config(
    config: ml_collections.ConfigDict, model_cfg: LlamaConfig, num_devices: int, process_count: int
) -> dict[str, int]:
    """Validates mesh, batch, sequence length and files; returns the resolved mesh shape."""
    try:
        mesh = resolve_mesh_shape(dict(config.mesh.shape), num_devices)
    except ValueError as e:
        raise ConfigError(f"mesh.shape: {e}") from e
    batch, micro = config.train.batch_size, config.train.microbatches
    data_parallel = mesh["data"] * mesh["fsdp"]
    if micro < 1 or batch % micro:
        raise ConfigError(
            f"train.batch_size={batch} is not divisible by train.microbatches={micro}; "
            "choose a batch size that is a multiple of the microbatch count"
        )
    if (batch // micro) % data_parallel:
        need = micro * data_parallel
        raise ConfigError(
            f"train.batch_size={batch} split into {micro} microbatch(es) of {batch // micro} is not divisible "
            f"by the data-parallel size data*fsdp={data_parallel}; use a multiple of {need} "
            f"(e.g. --config.train.batch_size={math.ceil(batch / need) * need})"
        )
    if batch % process_count:
        raise ConfigError(
            f"train.batch_size={batch} is not divisible by the {process_count} processes (hosts)"
        )
    seq_len = config.data.seq_len
    if seq_len > model_cfg.max_seq_len:
        raise ConfigError(
            f"data.seq_len={seq_len} exceeds the model's max_seq_len={model_cfg.max_seq_len}; lower "
            "data.seq_len or raise model.max_seq_len"
        )
    lengths = dict(config.data.feature_lengths)
    row = lengths.get("inputs", 0) + lengths.get("targets", 0)
    if row != seq_len:
        raise ConfigError(
            f"data.feature_lengths={lengths} pack into rows of {row} tokens but data.seq_len={seq_len}; "
            "make inputs + targets = seq_len"
        )
    if model_cfg.attention == "splash" and seq_len % 128:
        raise ConfigError(
            f"data.seq_len={seq_len} must be a multiple of 128 with model.attention=splash"
        )
    required = {
        "init.hf_dir": config.init.hf_dir,
        "init.gguf": config.init.get("gguf", ""),
        "data.tokenizer": config.data.tokenizer,
        "data.manual_dir": config.data.manual_dir,
    }
    required.update({f"data.files.{k}": v for k, v in config.data.get("files", {}).items()})
    for field, path in required.items():
        if path and not Path(path).exists():
            raise ConfigError(f"{field}: {path} does not exist")
    if config.data.prompt_format not in FORMAT_NAMES:
        raise ConfigError(
            f"data.prompt_format={config.data.prompt_format!r}; choose one of {FORMAT_NAMES}"
        )
    tokenizer = config.data.tokenizer
    if not tokenizer and not (config.init.hf_dir or config.init.get("gguf", "")):
        from tpu_train.data.sources import SHIPPED_TOKENIZER

        tokenizer = str(SHIPPED_TOKENIZER)  # what a run from scratch tokenizes with
    if tokenizer and Path(tokenizer).exists():
        from tpu_train.data.vocabulary import load_vocabulary

        pieces = load_vocabulary(tokenizer).vocab_size
        if pieces > model_cfg.vocab_size:
            raise ConfigError(
                f"data.tokenizer {tokenizer} has {pieces} pieces but the model's vocab_size is "
                f"{model_cfg.vocab_size}; set model.overrides.vocab_size >= {pieces} or use a matching tokenizer"
            )
    if config.train.nan_policy not in ("stop", "skip"):
        raise ConfigError(f"train.nan_policy={config.train.nan_policy!r}; choose 'stop' or 'skip'")
    return mesh
