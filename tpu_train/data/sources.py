"""Named data sources: which TFDS builder and config, and which manual directory feeds it.

Sources marked `shipped` read files in the repository's `data/` folder; the others read what the
user downloaded into their own manual directory. Preparing a source runs the builder once
(`download_and_prepare` with that manual directory; nothing is fetched from the network) and later
calls, in this checkout or another sharing `data_dir`, reuse the prepared TFRecords as long as the
source files hold the same bytes (`content_key`).

Example:
    >>> SOURCES["gsm8k_programs"].shipped, SOURCES["infinitymath"].config
    (True, 'full')
    >>> builder = prepare("gsm8k_programs", data_dir="/tmp/tfds")  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import tensorflow as tf
import tensorflow_datasets as tfds

from tpu_train import tokenizer_files
from tpu_train.data.builders import Gsm8k, Infinitymath, Mathinstruct

SHIPPED_DIR = Path(__file__).resolve().parents[2] / "data"
SHIPPED_TOKENIZER = (
    SHIPPED_DIR / tokenizer_files.SENTENCEPIECE_MODEL
)  # what runs from scratch tokenize with
# Prepared TFRecords are a cache: kept outside the repository, where TFDS keeps its own.
DEFAULT_TFDS_DIR = Path(os.environ.get("TFDS_DATA_DIR", Path.home() / "tensorflow_datasets"))
PREPARED_DIR = "tpu_train"  # under data_dir: one directory per builder, config and content key
_BUILDERS = {"infinitymath": Infinitymath, "mathinstruct": Mathinstruct, "gsm8k": Gsm8k}


@dataclass(frozen=True)
class Source:
    """A builder, its config name (None: the default) and whether its files ship with the repo."""

    builder: str
    config: str | None
    shipped: bool


SOURCES = {
    "infinitymath": Source("infinitymath", "full", shipped=False),
    "mathinstruct": Source("mathinstruct", "default", shipped=False),
    "gsm8k": Source("gsm8k", None, shipped=True),
    "gsm8k_programs": Source("infinitymath", "gsm8k_programs", shipped=True),
    "gsm8k_variants": Source("infinitymath", "gsm8k_variants", shipped=True),
}


def make_builder(
    source: str | Source, data_dir: str | Path, config: tfds.core.BuilderConfig | None = None
) -> tfds.core.DatasetBuilder:
    """The builder of a source (or of an explicit `config`, e.g. one with a field mapping)."""
    spec = SOURCES[source] if isinstance(source, str) else source
    cls = _BUILDERS[spec.builder]
    kwargs = {"config": config or spec.config} if (config or spec.config) else {}
    return cls(data_dir=str(data_dir), **kwargs)


def prepare(
    source: str | Source,
    data_dir: str | Path = DEFAULT_TFDS_DIR,
    manual_dir: str | Path | None = None,
    config: tfds.core.BuilderConfig | None = None,
) -> tfds.core.DatasetBuilder:
    """Build a source if needed and return its builder.

    `manual_dir` defaults to the repository's `data/` for shipped sources; user-downloaded sources
    need it explicitly.

    The prepared TFRecords live in `data_dir/tpu_train/<builder>-<config>-<content key>/`, keyed by a
    hash of the source files' bytes and of the builder's version and config (`content_key`): two
    checkouts sharing `~/tensorflow_datasets` with the same files (whatever their modification times)
    share one prepared dataset, and changed files get a new one instead of rebuilding a dataset that
    another run may be reading. A local build happens in a private temporary directory renamed into
    place when complete, so a concurrent run sees the whole dataset or none; when two runs build at
    once, the first rename wins and the other's copy is discarded.
    """
    spec = SOURCES[source] if isinstance(source, str) else source
    if manual_dir is None:
        if not spec.shipped:
            raise ValueError(
                f"source {source!r} reads user-downloaded files: pass manual_dir "
                f"({_BUILDERS[spec.builder].MANUAL_DOWNLOAD_INSTRUCTIONS})"
            )
        manual_dir = SHIPPED_DIR
    probe = make_builder(spec, data_dir, config)
    config_name = probe.builder_config.name if probe.builder_config else "default"
    keyed = f"{probe.name}-{config_name}-{content_key(probe, Path(manual_dir))}"
    root = os.path.join(str(data_dir), PREPARED_DIR)
    final = os.path.join(root, keyed)
    builder = make_builder(spec, final, config)
    if tf.io.gfile.exists(os.path.join(str(builder.data_path), "dataset_info.json")):
        return builder
    download = tfds.download.DownloadConfig(manual_dir=str(manual_dir))
    if "://" in root:  # object stores have no directory rename: TFDS's own staging directory
        builder.download_and_prepare(download_config=download)
        return make_builder(spec, final, config)
    os.makedirs(root, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{keyed}.building-", dir=root)
    try:
        make_builder(spec, staging, config).download_and_prepare(download_config=download)
        try:
            os.rename(staging, final)
        except OSError as err:  # another run renamed its build first: use that one
            if not os.path.exists(os.path.join(str(builder.data_path), "dataset_info.json")):
                raise OSError(
                    f"{final}: could not move the prepared data into place: {err}"
                ) from err
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return make_builder(spec, final, config)


def content_key(builder: tfds.core.DatasetBuilder, manual_dir: Path) -> str:
    """A hash of what determines a prepared dataset: the builder's name, version and config fields, and
    the bytes of each source file it reads from `manual_dir` (a missing file counts as missing, so the
    builder itself reports it). Modification times play no part."""
    cfg = builder.builder_config
    fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)} if cfg else {}
    files = [[name, _file_digest(manual_dir / name)] for name in builder.source_files()]
    identity = {"builder": builder.name, "version": str(builder.version), "config": fields}
    blob = json.dumps({**identity, "files": files}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=256)
def _digest_of(path: str, size: int, mtime_ns: int, inode: int) -> str:
    del size, mtime_ns, inode  # the cache key: a file rewritten in place is hashed again
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _file_digest(path: Path) -> str | None:
    """sha256 of a file's bytes (None: no such file); hashed once per process and file version, since
    every task loading a split asks again."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    return _digest_of(str(path.resolve()), info.st_size, info.st_mtime_ns, info.st_ino)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Prepare TFDS data sources from local files.")
    parser.add_argument("sources", nargs="*", default=[], help=f"any of {sorted(SOURCES)}")
    parser.add_argument("--data_dir", default=str(DEFAULT_TFDS_DIR))
    parser.add_argument("--manual_dir", default=None, help="folder with downloaded files")
    args = parser.parse_args(argv)
    names = args.sources or [n for n, s in SOURCES.items() if s.shipped or args.manual_dir]
    for name in names:
        builder = prepare(
            name, args.data_dir, args.manual_dir if not SOURCES[name].shipped else None
        )
        splits = {k: v.num_examples for k, v in builder.info.splits.items()}
        print(f"{name}: {builder.data_path} {splits}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
