"""Checksums of the files of a committed Orbax checkpoint step, written beside them and checked on restore.

What is hashed, and why the files rather than the arrays: restoring targets the current mesh, which may
differ from the one that saved (fsdp=8 saved, data=2 x fsdp=4 restores), so per-shard hashes of the
arrays could not be checked; the files are the same whatever reads them, and a truncated or deleted file
shows up as such. Each process hashes the files it wrote (OCDBT keeps them under
`<item>/ocdbt.process_<i>/`), the primary process the shared ones (metadata, the merged manifests), so
the cost is spread like the write itself: one read of what that process wrote, once the step has
committed (for async saves in a background thread, see `checkpoint.Checkpointer`). CRC-32 rather than
a cryptographic hash: it catches flipped bits and torn writes at about 3 GB/s, and nobody forges
checkpoints here.

Layout, inside the step directory (Orbax ignores files it did not write; the retention policy deletes
them with their step):

    <step>/tpu_train_checksums.process_<i>.json   {"algorithm": "crc32", "files": {path: [size, crc]}}
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Iterator

from etils import epath

MANIFEST_PREFIX = "tpu_train_checksums.process_"
_OWNER = re.compile(r"ocdbt\.process_(\d+)$")
_CHUNK = 4 << 20


def manifest_name(process: int) -> str:
    return f"{MANIFEST_PREFIX}{process}.json"


def owner(relative: str) -> int:
    """The process that wrote a file of a step: `ocdbt.process_<i>` directories belong to process i,
    everything else to the primary process 0."""
    for part in relative.split("/"):
        match = _OWNER.fullmatch(part)
        if match:
            return int(match.group(1))
    return 0


def _files(step_dir: epath.Path) -> Iterator[str]:
    """Relative paths of the files under a step directory, our manifests (finished or being written by
    another process) excluded."""
    pending = [step_dir]
    while pending:
        folder = pending.pop()
        for entry in folder.iterdir():
            if entry.is_dir():
                pending.append(entry)
            elif not entry.name.startswith(MANIFEST_PREFIX):
                yield str(entry.relative_to(step_dir))


def _crc(path: epath.Path) -> tuple[int, str]:
    size, crc = 0, 0
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            size += len(chunk)
            crc = zlib.crc32(chunk, crc)
    return size, f"{crc:08x}"


def write_manifest(step_dir: epath.Path, process: int) -> None:
    """Hashes the files of `step_dir` that `process` wrote and records them beside them."""
    files = {
        rel: list(_crc(step_dir / rel)) for rel in sorted(_files(step_dir)) if owner(rel) == process
    }
    text = json.dumps({"algorithm": "crc32", "files": files}, indent=0) + "\n"
    target = step_dir / manifest_name(process)
    if "://" in str(step_dir):  # an object store writes each object whole
        target.write_text(text)
        return
    # The temporary name keeps the manifest prefix, so the other processes, listing the same step
    # directory for their own manifests at the same time, skip it like the finished manifests.
    partial = step_dir / f"{target.name}.partial"
    partial.write_text(text)
    partial.rename(target)  # a crash mid-write leaves no half manifest that would fail the step


def manifests(step_dir: epath.Path) -> list[int]:
    """The processes whose manifests a step has (none: saved before checksums, or killed before its
    checksums were written; such a step is checked only by restoring it)."""
    found = []
    for entry in step_dir.iterdir():
        match = re.fullmatch(re.escape(MANIFEST_PREFIX) + r"(\d+)\.json", entry.name)
        if match:
            found.append(int(match.group(1)))
    return sorted(found)


def check_manifest(step_dir: epath.Path, process: int) -> str | None:
    """None when every file the manifest of `process` lists is there with its size and CRC; else the
    first problem, naming the file."""
    path = step_dir / manifest_name(process)
    try:
        files = json.loads(path.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"{path.name} is unreadable ({err})"
    for rel, (size, crc) in files.items():
        file = step_dir / rel
        if not file.exists():
            return f"{rel} is missing"
        actual_size, actual_crc = _crc(file)
        if actual_size != size:
            return f"{rel} has {actual_size:,} bytes, {size:,} when saved"
        if actual_crc != crc:
            return f"{rel} does not match its checksum (crc32 {actual_crc}, {crc} when saved)"
    return None
