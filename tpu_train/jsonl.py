"""Reading JSON Lines: the one reader behind every JSONL file the project takes in (program records, GSM8K,
MathInstruct, benchmarks, predictions, programs to execute).

Blank lines are skipped, ".gz" files are decompressed, and a line that is not a JSON object raises
`JsonlError` (or the caller's subclass of it) with a message that starts with "file:line".

Example:
    >>> import pathlib, tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "rows.jsonl"
    >>> _ = path.write_text('{"id": 1}\\n\\n[2]\\n')
    >>> reader = objects(path)
    >>> next(reader)[1]
    {'id': 1}
    >>> next(reader)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    tpu_train.jsonl.JsonlError: .../rows.jsonl:3: expected a JSON object, got list
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


class JsonlError(ValueError):
    """A line that cannot be read; the message names file and line (and the field, where one is wrong).
    Readers of particular formats raise subclasses of it (RecordError, BenchmarkFormatError, InputError)."""


def open_text(path: str | Path, mode: str = "r") -> IO[str]:
    """Open a UTF-8 text file, transparently gzip-compressed when the name ends in ".gz"."""
    if str(path).endswith(".gz"):
        return gzip.open(path, mode + "t", encoding="utf-8")
    return open(path, mode, encoding="utf-8")


def lines(path: str | Path) -> Iterator[tuple[str, str]]:
    """("file:line", text) for each non-blank line of a JSONL file (".gz" accepted). A line that is not
    UTF-8 raises JsonlError naming it (decoded line by line, so the message can say which)."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise JsonlError(
                    f"{path}:{number}: not UTF-8 text ({err.reason} at byte {err.start} of the "
                    "line); save the file as UTF-8"
                ) from None
            if line.strip():
                yield f"{path}:{number}", line


def parse_object(line: str, where: str, error: type[JsonlError] = JsonlError) -> dict[str, Any]:
    """One line as a JSON object; anything else raises `error` with `where` ("file:line") first."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise error(f"{where}: invalid JSON: {err.msg} (column {err.colno})") from None
    if not isinstance(row, dict):
        raise error(f"{where}: expected a JSON object, got {type(row).__name__}")
    return row


def objects(
    path: str | Path, error: type[JsonlError] = JsonlError
) -> Iterator[tuple[str, dict[str, Any]]]:
    """("file:line", object) for each non-blank line; the first unreadable line raises `error`."""
    for where, line in lines(path):
        yield where, parse_object(line, where, error)
