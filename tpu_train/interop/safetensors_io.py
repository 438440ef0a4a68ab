"""Streaming safetensors writer and a sharded-checkpoint reader.

The writer computes the header from shapes and dtypes alone, then writes tensor data one tensor at a time,
so exporting a model never holds more than one tensor on the host beyond the model itself.

File layout (the safetensors format): 8-byte little-endian header length N, N bytes of JSON
`{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}` padded with spaces to a
multiple of 8, then the raw little-endian tensor bytes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import struct
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
from safetensors import SafetensorError, safe_open

_DTYPE_CODES = {
    np.dtype(np.float32): "F32",
    np.dtype(np.float16): "F16",
    np.dtype(ml_dtypes.bfloat16): "BF16",
    np.dtype(np.float64): "F64",
    np.dtype(np.int32): "I32",
    np.dtype(np.int64): "I64",
}

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


@dataclasses.dataclass(frozen=True)
class PendingTensor:
    """A tensor to write: its name, shape and dtype now, its values only when `fetch()` is called."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    fetch: Callable[[], np.ndarray]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def write_file(path: Path, tensors: Sequence[PendingTensor]) -> None:
    """Writes one safetensors file, fetching and writing each tensor in turn."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for t in tensors:
        if t.dtype not in _DTYPE_CODES:
            raise TypeError(f"{t.name}: dtype {t.dtype} has no safetensors code")
        header[t.name] = {
            "dtype": _DTYPE_CODES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + t.nbytes],
        }
        offset += t.nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for t in tensors:
            value = np.ascontiguousarray(t.fetch(), dtype=t.dtype)
            if value.shape != t.shape:
                raise ValueError(f"{t.name}: fetched shape {value.shape}, announced {t.shape}")
            f.write(value.reshape(-1).view(np.uint8).data)


def write_sharded(
    out_dir: Path, tensors: Sequence[PendingTensor], max_shard_bytes: int
) -> list[str]:
    """Writes `model.safetensors`, or `model-0000i-of-0000n.safetensors` shards plus the index when the
    total exceeds `max_shard_bytes`. Returns the file names written."""
    shards: list[list[PendingTensor]] = [[]]
    for t in tensors:
        if shards[-1] and sum(x.nbytes for x in shards[-1]) + t.nbytes > max_shard_bytes:
            shards.append([])
        shards[-1].append(t)
    if len(shards) == 1:
        write_file(out_dir / SINGLE_FILE, shards[0])
        return [SINGLE_FILE]
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    for name, shard in zip(names, shards, strict=True):
        write_file(out_dir / name, shard)
        weight_map.update({t.name: name for t in shard})
    index = {"metadata": {"total_size": sum(t.nbytes for t in tensors)}, "weight_map": weight_map}
    (out_dir / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    return [*names, INDEX_FILE]


class SafetensorsFileError(ValueError):
    """A safetensors file (or its index) that cannot be read: truncated, not safetensors, bad JSON."""


def open_safetensors(path: Path) -> Any:
    """`safe_open(path)`, with a truncated or foreign file reported by its path rather than as
    safetensors' bare "incomplete metadata, file not fully covered"."""
    try:
        return safe_open(path, framework="numpy")
    except SafetensorError as e:
        size = path.stat().st_size
        raise SafetensorsFileError(
            f"{path}: not a complete safetensors file ({size:,} bytes; {e}); it was probably cut "
            "short by an interrupted download or copy: fetch it again"
        ) from None


class CheckpointReader:
    """Reads tensors by name from a Hugging Face directory holding `model.safetensors` or an indexed set
    of shards. Opens each file lazily (memory-mapped by safetensors)."""

    def __init__(self, hf_dir: Path):
        self.hf_dir = Path(hf_dir)
        index_path = self.hf_dir / INDEX_FILE
        if index_path.exists():
            try:
                weight_map = json.loads(index_path.read_text())["weight_map"]
            except (ValueError, KeyError) as e:
                raise SafetensorsFileError(
                    f"{index_path}: not a safetensors index (a JSON object with a 'weight_map'): "
                    f"{e}"
                ) from None
        elif (self.hf_dir / SINGLE_FILE).exists():
            with open_safetensors(self.hf_dir / SINGLE_FILE) as f:
                weight_map = dict.fromkeys(f.keys(), SINGLE_FILE)
        else:
            raise FileNotFoundError(
                f"{self.hf_dir}: neither {SINGLE_FILE} nor {INDEX_FILE} found (only safetensors "
                "checkpoints are read; convert .bin files with transformers first)"
            )
        self.weight_map: dict[str, str] = weight_map
        self._open: dict[str, object] = {}

    def names(self) -> Iterator[str]:
        return iter(self.weight_map)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """{name: shape} of every tensor, from the file headers (no tensor data is read)."""
        return {
            name: tuple(self._file(name).get_slice(name).get_shape()) for name in self.weight_map
        }

    def get(self, name: str) -> np.ndarray:
        return self._file(name).get_tensor(name)

    def read(self, name: str, index: tuple[slice, ...] = ()) -> np.ndarray:
        """Part `index` of a tensor as float32; only those bytes of the memory-mapped file are read."""
        part = self._file(name).get_slice(name)[index] if index else self.get(name)
        return np.asarray(part, np.float32)

    def _file(self, name: str) -> Any:
        if name not in self.weight_map:
            raise KeyError(f"{self.hf_dir}: tensor {name!r} is missing from the checkpoint")
        file = self.weight_map[name]
        if file not in self._open:
            path = self.hf_dir / file
            if not path.exists():
                raise FileNotFoundError(
                    f"{path}: shard named in {INDEX_FILE} for {name!r} is missing"
                )
            self._open[file] = open_safetensors(path)
        return self._open[file]
