"""Loading a model (and its tokenizer) to sample from: a tpu_train workdir or a Hugging Face directory.

Example:
    model, tokenizer, eos_ids = load_for_sampling(workdir="runs/sft", compute_dtype="float32")
    sampler = Sampler(model, tokenizer=tokenizer, eos_ids=eos_ids)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tpu_train import checkpoint
from tpu_train.interop.hf import load_hf_params, read_hf_config
from tpu_train.model.llama import Llama
from tpu_train.model.params import model_from_params
from tpu_train.sampling.tokenizer import Tokenizer, load_tokenizer
from tpu_train.sharding import Sharder


def load_for_sampling(
    *,
    workdir: str | Path | None = None,
    hf_dir: str | Path | None = None,
    step: int | None = None,
    sharder: Sharder | None = None,
    **overrides: Any,
) -> tuple[Llama, Tokenizer | None, tuple[int, ...]]:
    """(model, tokenizer or None, EOS ids) from exactly one of `workdir` (checkpoint `step`, default
    latest) and `hf_dir`. `overrides` replace LlamaConfig fields (e.g. compute_dtype); the layers are
    stacked unless `scan_layers=False` is passed (what `Sampler` prefers on CPU).

    The tokenizer is the directory's `tokenizer.json` or `tokenizer.model`, if it has one. EOS ids are the tokenizer's EOS,
    plus for a Hugging Face directory the `eos_token_id` of config.json / generation_config.json.
    """
    if (workdir is None) == (hf_dir is None):
        raise ValueError("pass exactly one of workdir and hf_dir")
    overrides = {"scan_layers": True, **overrides}
    if workdir is not None:
        directory = Path(workdir)
        cfg = checkpoint.read_model_config(directory).replace(**overrides)
        # a LoRA workdir gives the plain model, its adapters merged in
        params, cfg, _ = checkpoint.restore_model_params(directory, cfg, sharder, step)
    else:
        if step is not None:
            raise ValueError("step applies to workdirs; a Hugging Face directory holds one model")
        directory = Path(hf_dir)
        cfg = read_hf_config(directory, **overrides)
        params = load_hf_params(directory, cfg, sharder)
    model = model_from_params(cfg, params, sharder)
    tokenizer = load_tokenizer(directory)
    eos: list[int] = list(tokenizer.eos_ids) if tokenizer is not None else []
    if hf_dir is not None:
        for name in ("config.json", "generation_config.json"):
            eos += _hf_eos(directory / name)
    return model, tokenizer, tuple(dict.fromkeys(eos))


def _hf_eos(path: Path) -> list[int]:
    if not path.exists():
        return []
    value = json.loads(path.read_text()).get("eos_token_id")
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, list) else [int(value)]
