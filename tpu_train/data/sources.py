"""Named data sources: which TFDS builder and config, and which manual directory feeds it.

Sources marked `shipped` read files in the repository's `data/` folder; the others read what the
user downloaded into their own manual directory. Preparing a source runs the builder once
(`download_and_prepare` with that manual directory; nothing is fetched from the network) and later
calls reuse the prepared TFRecords under `data_dir`.

Example:
    >>> SOURCES["gsm8k_programs"].shipped, SOURCES["infinitymath"].config
    (True, 'full')
    >>> builder = prepare("gsm8k_programs", data_dir="/tmp/tfds")  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging

from tpu_train import tokenizer_files
from tpu_train.data.builders import Gsm8k, Infinitymath, Mathinstruct

SHIPPED_DIR = Path(__file__).resolve().parents[2] / "data"
SHIPPED_TOKENIZER = (
    SHIPPED_DIR / tokenizer_files.SENTENCEPIECE_MODEL
)  # what runs from scratch tokenize with
# Prepared TFRecords are a cache: kept outside the repository, where TFDS keeps its own.
DEFAULT_TFDS_DIR = Path(os.environ.get("TFDS_DATA_DIR", Path.home() / "tensorflow_datasets"))
_STAMP = "source_stamp.json"
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
    """
    spec = SOURCES[source] if isinstance(source, str) else source
    if manual_dir is None:
        if not spec.shipped:
            raise ValueError(
                f"source {source!r} reads user-downloaded files: pass manual_dir "
                f"({_BUILDERS[spec.builder].MANUAL_DOWNLOAD_INSTRUCTIONS})"
            )
        manual_dir = SHIPPED_DIR
    builder = make_builder(spec, data_dir, config)
    stamp = source_stamp(builder, Path(manual_dir))
    stamp_file = builder.data_path / _STAMP
    if tf.io.gfile.exists(builder.data_path / "dataset_info.json"):
        if tf.io.gfile.exists(stamp_file) and _read(stamp_file) == stamp:
            return builder
        logging.warning("%s: source files changed since preparation; rebuilding", builder.data_path)
        mode = tfds.download.GenerateMode.FORCE_REDOWNLOAD
    else:
        mode = tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir), download_mode=mode)
    )
    with tf.io.gfile.GFile(stamp_file, "w") as handle:
        handle.write(stamp)
    return make_builder(spec, data_dir, config)


def source_stamp(builder: tfds.core.DatasetBuilder, manual_dir: Path) -> str:
    """Size and modification time of each source file: a changed file triggers a rebuild."""
    entries = []
    for name in builder.source_files():
        path = manual_dir / name
        info = path.stat() if path.exists() else None
        entries.append([name, info.st_size if info else None, info.st_mtime_ns if info else None])
    return json.dumps(entries)


def _read(path: Path) -> str:
    with tf.io.gfile.GFile(path) as handle:
        return handle.read()


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
