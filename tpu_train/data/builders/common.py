"""Helpers shared by the local-file TFDS builders.

Example:
    >>> split_of("gsm8k/train/12/v3", validation_percent=2) == split_of("gsm8k/train/12", 2)
    True
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from absl import logging

from tpu_train.data.records import RecordError
from tpu_train.jsonl import JsonlError, open_text

T = TypeVar("T")
_VARIANT_SUFFIX = re.compile(r"/v\d+$")


def split_of(record_id: str, validation_percent: int) -> str:
    """Deterministic "train"/"validation" assignment by a hash of the seed id.

    Variants (`<seed id>/v<k>`) follow their seed, so no seed leaks across splits.
    """
    seed_id = _VARIANT_SUFFIX.sub("", record_id)
    bucket = int(hashlib.md5(seed_id.encode()).hexdigest(), 16) % 100
    return "validation" if bucket < validation_percent else "train"


def splits_present(ids: Iterator[str], validation_percent: int) -> list[str]:
    """["train", "validation"], or ["train"] when no id would land in validation (TFDS cannot
    write an empty split). Stops reading at the first validation id.

    Example:
        >>> splits_present(iter(["a", "b"]), 0), splits_present(iter(str(i) for i in range(500)), 2)
        (['train'], ['train', 'validation'])
    """
    if validation_percent > 0 and any(split_of(i, validation_percent) == "validation" for i in ids):
        return ["train", "validation"]
    return ["train"]


def iter_json_array(path: str | Path) -> Iterator[tuple[str, Any]]:
    """Yield ("file:line", object) for each element of a JSON array file, with its line number."""
    with open_text(path) as handle:
        text = handle.read()
    decoder = json.JSONDecoder()
    pos = text.find("[")
    if pos < 0:
        raise RecordError(f"{path}:1: expected a JSON array")
    line, counted = 1, 0
    pos += 1
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text):
            raise RecordError(f"{path}: JSON array is not closed")
        line += text.count("\n", counted, pos)
        counted = pos
        if text[pos] == "]":
            return
        try:
            obj, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            raise RecordError(f"{path}:{line}: invalid JSON: {err.msg}") from err
        yield f"{path}:{line}", obj
        pos = end


def parse_all(
    items: Iterator[tuple[str, Any]],
    parse: Callable[[str, Any], T],
    skipped: list[str] | None,
    what: str,
) -> Iterator[T]:
    """Apply `parse(where, raw)` to each item.

    With `skipped=None` the first bad item raises RecordError (naming file, line and field);
    otherwise bad items are appended to `skipped` (their error messages), counted and logged.
    """
    before = len(skipped) if skipped is not None else 0
    for where, raw in items:
        try:
            yield parse(where, raw)
        except JsonlError as err:
            if skipped is None:
                raise
            skipped.append(str(err))
    if skipped is not None and len(skipped) > before:
        listing = "\n  ".join(skipped[before:])
        logging.warning(
            "%s: skipped %d unreadable lines:\n  %s", what, len(skipped) - before, listing
        )


class SingleFileSource:
    """Mixin for builders that read one file (`builder_config.file_name`) from the manual directory and
    may skip unreadable lines (`skipped_lines` lists them, for the caller to report)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.skipped_lines: list[str] = []

    def source_files(self) -> list[str]:
        """Files read from the manual directory."""
        return [self.builder_config.file_name]
