"""Import a Hugging Face Llama directory into a workdir, and export a workdir back.

    import_hf(hf_dir, workdir)    config.json + safetensors  ->  W/checkpoints/0 (Orbax) + W/model_config.json
    export_hf(workdir, out_dir)   W/checkpoints/<step>       ->  safetensors + config.json + generation_config.json
                                                                 (+ tokenizer files)

Exports are written into a temporary sibling directory and renamed into place when complete, so a crash
leaves either no export or a whole one.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import ml_dtypes
import numpy as np

from tpu_train import checkpoint
from tpu_train.interop import hf_weights
from tpu_train.interop.hf_config import config_from_hf, config_to_hf
from tpu_train.interop.safetensors_io import CheckpointReader, PendingTensor, write_sharded
from tpu_train.model.config import LlamaConfig
from tpu_train.model.params import canonical_abstract, host_array
from tpu_train.sharding import Sharder

DEFAULT_MAX_SHARD_BYTES = 4 << 30
EXPORT_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


def read_hf_config(hf_dir: str | Path, **overrides: Any) -> LlamaConfig:
    path = Path(hf_dir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: not found; is {hf_dir} a Hugging Face model directory?")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from e
    return config_from_hf(raw, source=str(path), **overrides)


def load_hf_params(hf_dir: str | Path, cfg: LlamaConfig, sharder: Sharder | None = None) -> dict:
    """The canonical parameter tree of a HF checkpoint, each parameter placed (and sharded) on device."""
    target = canonical_abstract(cfg, sharder)
    reader = CheckpointReader(Path(hf_dir))

    def place(path: tuple[str, ...], value: np.ndarray) -> jax.Array:
        leaf = target
        for key in path:
            leaf = leaf[key]
        value = value.astype(leaf.dtype)
        return (
            jax.device_put(value, leaf.sharding)
            if leaf.sharding is not None
            else jax.device_put(value)
        )

    shapes = jax.tree.map(lambda x: x.shape, target)
    flat_shapes = {
        tuple(k.key for k in path): shape
        for path, shape in jax.tree_util.tree_flatten_with_path(
            shapes, is_leaf=lambda x: isinstance(x, tuple)
        )[0]
    }
    return hf_weights.load_params(reader.get, set(reader.names()), cfg, flat_shapes, place)


def import_hf(
    hf_dir: str | Path, workdir: str | Path, overrides: Mapping[str, Any] | None = None
) -> LlamaConfig:
    """Reads a transformers Llama directory and writes it as step 0 of `workdir`.

    `overrides` set tpu_train-only config fields (dtypes, scan_layers, attention...). A `tokenizer.model`
    in `hf_dir` is copied into the workdir so sampling and export find it.
    """
    hf_dir, workdir = Path(hf_dir), Path(workdir)
    cfg = read_hf_config(hf_dir, **(overrides or {}))
    params = load_hf_params(hf_dir, cfg)
    checkpoint.save_params(workdir, 0, params, cfg)
    tokenizer = hf_dir / checkpoint.TOKENIZER_FILE
    if tokenizer.exists():
        (checkpoint.workdir_path(workdir) / checkpoint.TOKENIZER_FILE).write_bytes(
            tokenizer.read_bytes()
        )
    return cfg


def export_params(
    params: dict,
    cfg: LlamaConfig,
    out_dir: str | Path,
    *,
    dtype: str = "float32",
    tokenizer_model: str | Path | None = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    overwrite: bool = False,
) -> list[str]:
    """Writes `params` (canonical tree, possibly sharded) as a transformers Llama directory.

    Returns the names of the files written. Tensors are fetched and written one at a time.
    """
    out_dir = Path(out_dir)
    if dtype not in EXPORT_DTYPES:
        raise ValueError(f"export dtype {dtype!r}; choose one of {sorted(EXPORT_DTYPES)}")
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} exists; pass overwrite=True (--overwrite) to replace it")
    np_dtype = np.dtype(EXPORT_DTYPES[dtype])
    tensors = [
        PendingTensor(name, shape, np_dtype, fetch)
        for name, shape, fetch in hf_weights.iter_hf_tensors(params, cfg, host_array)
    ]
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        files = write_sharded(staging, tensors, max_shard_bytes)
        token_ids = _write_tokenizer(staging, tokenizer_model) if tokenizer_model else {}
        files += [*token_ids.pop("files", [])]
        (staging / "config.json").write_text(
            json.dumps(config_to_hf(cfg, dtype, **token_ids), indent=2)
        )
        generation = {"do_sample": False, **token_ids}
        (staging / "generation_config.json").write_text(json.dumps(generation, indent=2))
        files += ["config.json", "generation_config.json"]
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return sorted(files)


def export_hf(
    workdir: str | Path,
    out_dir: str | Path,
    *,
    step: int | None = None,
    dtype: str | None = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    overwrite: bool = False,
) -> tuple[int, list[str]]:
    """Exports checkpoint `step` (default: latest) of `workdir`; dtype defaults to the parameter dtype.
    Returns (step, files written)."""
    cfg = checkpoint.read_model_config(workdir)
    params, step = checkpoint.restore_params(workdir, canonical_abstract(cfg, None), step)
    tokenizer = checkpoint.workdir_path(workdir) / checkpoint.TOKENIZER_FILE
    with tempfile.TemporaryDirectory() as tmp:
        local_tokenizer = None
        if tokenizer.exists():  # sentencepiece reads local files only; the workdir may be on gs://
            local_tokenizer = Path(tmp) / checkpoint.TOKENIZER_FILE
            local_tokenizer.write_bytes(tokenizer.read_bytes())
        files = export_params(
            params,
            cfg,
            out_dir,
            dtype=dtype or cfg.param_dtype,
            tokenizer_model=local_tokenizer,
            max_shard_bytes=max_shard_bytes,
            overwrite=overwrite,
        )
    return step, files


def _write_tokenizer(out_dir: Path, model_file: str | Path) -> dict:
    """Copies a sentencepiece model with the transformers tokenizer files; returns its special token ids
    (and the file names under "files")."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    shutil.copyfile(model_file, out_dir / "tokenizer.model")

    def piece(i: int) -> str | None:
        return sp.id_to_piece(i) if 0 <= i < sp.get_piece_size() else None

    ids = {"bos_token_id": sp.bos_id(), "eos_token_id": sp.eos_id()}
    if sp.pad_id() >= 0:
        ids["pad_token_id"] = sp.pad_id()
    special = {
        "bos_token": piece(sp.bos_id()),
        "eos_token": piece(sp.eos_id()),
        "unk_token": piece(sp.unk_id()),
        **({"pad_token": piece(sp.pad_id())} if sp.pad_id() >= 0 else {}),
    }
    tokenizer_config = {
        "tokenizer_class": "LlamaTokenizer",
        "add_bos_token": True,
        "add_eos_token": False,
        "legacy": False,
        **special,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    return {**ids, "files": ["tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"]}
