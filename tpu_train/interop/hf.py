"""Import a Hugging Face Llama directory into a workdir, and export a workdir back.

    import_hf(hf_dir, workdir)    config.json + safetensors  ->  W/checkpoints/0 (Orbax) + W/model_config.json
    import_checkpoint(GGUFCheckpoint(f), workdir)   a llama.cpp GGUF file, dequantized  ->  the same
    export_hf(workdir, out_dir)   W/checkpoints/<step>       ->  safetensors + config.json + generation_config.json
                                                                 (+ tokenizer files)

Exports are written into a temporary sibling directory and renamed into place when complete, so a crash
leaves either no export or a whole one.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import ml_dtypes
import numpy as np

from tpu_train import checkpoint, tokenizer_files
from tpu_train.interop import hf_weights
from tpu_train.interop.hf_config import config_from_hf, config_to_hf
from tpu_train.interop.safetensors_io import CheckpointReader, PendingTensor, write_sharded
from tpu_train.model.config import LlamaConfig
from tpu_train.model.params import canonical_abstract, host_array
from tpu_train.sharding import Sharder

DEFAULT_MAX_SHARD_BYTES = 4 << 30
EXPORT_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}
LORA_EXPORTS = ("merged", "adapter")  # what export_hf writes for a LoRA workdir


def read_hf_config(hf_dir: str | Path, **overrides: Any) -> LlamaConfig:
    path = Path(hf_dir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: not found; is {hf_dir} a Hugging Face model directory?")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from e
    return config_from_hf(raw, source=str(path), **overrides)


class HfDirectory:
    """A transformers Llama directory (config.json + safetensors) as an import source."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._reader: CheckpointReader | None = None

    def config(self, **overrides: Any) -> LlamaConfig:
        return read_hf_config(self.path, **overrides)

    @property
    def reader(self) -> CheckpointReader:
        if self._reader is None:
            self._reader = CheckpointReader(self.path)
        return self._reader

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return self.reader.shapes()

    def read(self, name: str, index: tuple[slice, ...] = ()) -> np.ndarray:
        """Part `index` of a tensor (whole by default), read from the memory-mapped file."""
        return self.reader.read(name, index)

    def write_tokenizer(self, out_dir: str | Path) -> list[str]:
        """Copies the directory's tokenizer files, if it has any (returns their names)."""
        return checkpoint.copy_tokenizer(self.path, out_dir)


# What an import reads: `config(**overrides)`, `shapes()` ({HF name: shape}), `read(hf_name, index)`
# (part `index` of a tensor, HF layout, float32) and `write_tokenizer(local_dir)`. `GGUFCheckpoint`
# (a llama.cpp file, `tpu_train.interop.gguf`) is one.
ImportSource = Any


def open_source(hf_dir: str | Path = "", gguf: str | Path = "") -> ImportSource:
    """The checkpoint to import: exactly one of a transformers directory and a GGUF file."""
    if bool(hf_dir) == bool(gguf):
        raise ValueError("give exactly one of hf_dir (a transformers directory) and gguf (a file)")
    if hf_dir:
        return HfDirectory(hf_dir)
    from tpu_train.interop.gguf import GGUFCheckpoint

    return GGUFCheckpoint(gguf)


def write_tokenizer(source: ImportSource, workdir: str | Path) -> list[str]:
    """Writes an import source's tokenizer into a workdir (local or gs://; the source writes into a
    local directory, then the files are copied); returns their names ([] for a source without one)."""
    with tempfile.TemporaryDirectory() as tmp:
        source.write_tokenizer(tmp)
        return checkpoint.copy_tokenizer(tmp, workdir)


def load_params(source: ImportSource, cfg: LlamaConfig, sharder: Sharder | None = None) -> dict:
    """The canonical parameter tree of an import source, each parameter placed (and sharded) on device.

    Every parameter is built as a global array from per-device parts (`jax.make_array_from_callback`),
    each read from the source on its own: a process reads only the parts its devices hold, and holds
    on the host at most one parameter's worth of them, never the whole model. Devices that hold the
    same part (replicas) share one read."""
    target = canonical_abstract(cfg, sharder)
    leaves = {
        tuple(k.key for k in path): leaf
        for path, leaf in jax.tree_util.tree_flatten_with_path(target)[0]
    }

    def place(path: tuple[str, ...], shape: tuple[int, ...], read_part) -> jax.Array:
        leaf = leaves[path]
        if leaf.sharding is None:
            return jax.device_put(read_part(()).astype(leaf.dtype))
        parts: dict = {}

        def part(index: tuple[slice, ...]) -> np.ndarray:
            key = tuple(s.indices(n)[:2] for s, n in zip(index, shape, strict=False))
            if key not in parts:
                parts[key] = read_part(index).astype(leaf.dtype)
            return parts[key]

        return jax.make_array_from_callback(shape, leaf.sharding, part)

    shapes = {path: tuple(leaf.shape) for path, leaf in leaves.items()}
    return hf_weights.load_params(source.read, source.shapes(), cfg, shapes, place)


def load_hf_params(hf_dir: str | Path, cfg: LlamaConfig, sharder: Sharder | None = None) -> dict:
    """The canonical parameter tree of a HF directory (see `load_params`)."""
    return load_params(HfDirectory(hf_dir), cfg, sharder)


def import_checkpoint(
    source: ImportSource, workdir: str | Path, overrides: Mapping[str, Any] | None = None
) -> LlamaConfig:
    """Writes an import source as step 0 of `workdir` (local or gs://), with its model config and
    tokenizer. Refuses a workdir that already has checkpoints (nothing is written then)."""
    if checkpoint.latest_step(workdir) is not None:
        raise FileExistsError(
            f"{checkpoint.workdir_path(workdir)}: already has checkpoints; import into a new workdir"
        )
    cfg = source.config(**(overrides or {}))
    params = load_params(source, cfg)
    checkpoint.save_params(workdir, 0, params, cfg)
    write_tokenizer(source, workdir)
    return cfg


def import_hf(
    hf_dir: str | Path, workdir: str | Path, overrides: Mapping[str, Any] | None = None
) -> LlamaConfig:
    """Reads a transformers Llama directory and writes it as step 0 of `workdir`.

    `overrides` set tpu_train-only config fields (dtypes, scan_layers, attention...). The tokenizer
    files of `hf_dir` (tokenizer.json and its config, or tokenizer.model) are copied into the workdir so
    sampling and export find them.
    """
    return import_checkpoint(HfDirectory(hf_dir), workdir, overrides)


def export_params(
    params: dict,
    cfg: LlamaConfig,
    out_dir: str | Path,
    *,
    dtype: str = "float32",
    tokenizer_dir: str | Path | None = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    overwrite: bool = False,
) -> list[str]:
    """Writes `params` (canonical tree, possibly sharded) as a transformers Llama directory.

    `tokenizer_dir` (local) holds the tokenizer files to ship with the weights (a workdir's: tokenizer.json
    and its config, or tokenizer.model). Returns the names of the files written. Tensors are fetched and
    written one at a time.
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
    with staged_directory(out_dir) as staging:
        files = write_sharded(staging, tensors, max_shard_bytes)
        token_ids = _write_tokenizer(staging, Path(tokenizer_dir)) if tokenizer_dir else {}
        files += [*token_ids.pop("files", [])]
        (staging / "config.json").write_text(
            json.dumps(config_to_hf(cfg, dtype, **token_ids), indent=2)
        )
        generation = {"do_sample": False, **token_ids}
        (staging / "generation_config.json").write_text(json.dumps(generation, indent=2))
        files += ["config.json", "generation_config.json"]
    return sorted(files)


@contextlib.contextmanager
def staged_directory(out_dir: Path) -> Iterator[Path]:
    """A temporary directory beside `out_dir` that replaces it when the block completes, and is removed
    if it fails: an export is never left half-written, and an old one is replaced only by a whole one."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        yield staging
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def export_hf(
    workdir: str | Path,
    out_dir: str | Path,
    *,
    step: int | None = None,
    dtype: str | None = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    overwrite: bool = False,
    lora: str = "merged",
) -> tuple[int, list[str]]:
    """Exports checkpoint `step` (default: latest) of `workdir`; dtype defaults to the parameter dtype.
    Returns (step, files written). An `out_dir` that is, contains or lies inside the workdir is refused:
    replacing it (--overwrite) would delete the run.

    A LoRA workdir exports, with `lora="merged"`, the plain model (adapters merged into the weights);
    with `lora="adapter"`, a PEFT adapter directory (`interop.peft_adapter`) for the base model."""
    _refuse_overlap(workdir, out_dir)
    cfg = checkpoint.read_model_config(workdir)
    if lora not in LORA_EXPORTS:
        raise ValueError(f"lora={lora!r}; choose one of {LORA_EXPORTS}")
    if lora == "adapter":
        from tpu_train.interop.peft_adapter import export_adapter

        return export_adapter(
            workdir, cfg, Path(out_dir), step=step, dtype=dtype, overwrite=overwrite
        )
    params, cfg, step = checkpoint.restore_model_params(workdir, cfg, None, step)
    with tempfile.TemporaryDirectory() as tmp:
        # sentencepiece and tokenizers read local files only; the workdir may be on gs://
        has_tokenizer = bool(checkpoint.copy_tokenizer(checkpoint.workdir_path(workdir), tmp))
        files = export_params(
            params,
            cfg,
            out_dir,
            dtype=dtype or cfg.param_dtype,
            tokenizer_dir=tmp if has_tokenizer else None,
            max_shard_bytes=max_shard_bytes,
            overwrite=overwrite,
        )
    return step, files


def _refuse_overlap(workdir: str | Path, out_dir: str | Path) -> None:
    work = Path(str(checkpoint.workdir_path(workdir))).resolve()
    out = Path(out_dir).resolve()
    if out == work or work in out.parents or out in work.parents:
        raise ValueError(
            f"export directory {out_dir} overlaps the workdir {workdir}; choose a directory outside it "
            "(e.g. a sibling), so that writing the export cannot delete the run"
        )


def _write_tokenizer(out_dir: Path, tokenizer_dir: Path) -> dict:
    """Writes the tokenizer files transformers loads; returns their special token ids (and the file
    names under "files")."""
    if (tokenizer_dir / tokenizer_files.TOKENIZER_JSON).exists():
        return _copy_hf_tokenizer(out_dir, tokenizer_dir)
    return _write_sentencepiece_tokenizer(
        out_dir, tokenizer_dir / tokenizer_files.SENTENCEPIECE_MODEL
    )


def _copy_hf_tokenizer(out_dir: Path, tokenizer_dir: Path) -> dict:
    """tokenizer.json (+ tokenizer_config.json, special_tokens_map.json) as they are; the special ids come
    from the config's token strings."""
    from tokenizers import Tokenizer

    files = [n for n in tokenizer_files.HF_FILES if (tokenizer_dir / n).exists()]
    for name in files:
        shutil.copyfile(tokenizer_dir / name, out_dir / name)
    config_path = tokenizer_dir / tokenizer_files.TOKENIZER_CONFIG
    config = json.loads(config_path.read_text()) if config_path.exists() else {}
    tokenizer = Tokenizer.from_file(str(tokenizer_dir / tokenizer_files.TOKENIZER_JSON))
    ids = {}
    for field in ("bos", "eos", "pad"):
        token = config.get(f"{field}_token")
        token = token.get("content") if isinstance(token, dict) else token
        token_id = tokenizer.token_to_id(token) if token else None
        if token_id is not None:
            ids[f"{field}_token_id"] = token_id
    return {**ids, "files": files}


def _write_sentencepiece_tokenizer(out_dir: Path, model_file: Path) -> dict:
    """Copies a sentencepiece model with the transformers tokenizer files; returns its special token ids
    (and the file names under "files")."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    shutil.copyfile(model_file, out_dir / tokenizer_files.SENTENCEPIECE_MODEL)

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
    (out_dir / tokenizer_files.TOKENIZER_CONFIG).write_text(json.dumps(tokenizer_config, indent=2))
    (out_dir / tokenizer_files.SPECIAL_TOKENS_MAP).write_text(json.dumps(special, indent=2))
    return {**ids, "files": [tokenizer_files.SENTENCEPIECE_MODEL, *tokenizer_files.HF_FILES[1:]]}
