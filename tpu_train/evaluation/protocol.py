"""Frames between the executor and its workers: a 4-byte length, then a JSON object.

Only JSON travels, and readers check the shape of every message field by field, so nothing a
program produces is ever unpickled or evaluated by the evaluator. Program output reaches the
executor only as a string value inside a worker-built frame, so text that merely looks like a
frame is just text.
"""

from __future__ import annotations

import json
import os
import struct

MAX_FRAME = 64 << 20
_HEADER = struct.Struct(">I")


class ProtocolError(RuntimeError):
    """A peer sent something that is not a well-formed frame."""


def encode(message: dict) -> bytes:
    """Serialise one message as a frame."""
    body = json.dumps(message, ensure_ascii=True, separators=(",", ":")).encode("ascii")
    if len(body) > MAX_FRAME:
        raise ProtocolError(f"frame of {len(body)} bytes exceeds {MAX_FRAME}")
    return _HEADER.pack(len(body)) + body


def write_frame(fd: int, message: dict) -> None:
    """Write a whole frame to a blocking descriptor."""
    view = memoryview(encode(message))
    while view:
        view = view[os.write(fd, view) :]


def _read_exact(fd: int, size: int) -> bytes | None:
    chunks = []
    while size:
        chunk = os.read(fd, min(size, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def read_frame(fd: int) -> dict | None:
    """Read one frame from a blocking descriptor; None at a clean end of stream."""
    header = _read_exact(fd, _HEADER.size)
    if header is None:
        return None
    (size,) = _HEADER.unpack(header)
    if size > MAX_FRAME:
        raise ProtocolError(f"announced frame of {size} bytes exceeds {MAX_FRAME}")
    body = _read_exact(fd, size)
    if body is None:
        raise ProtocolError("stream ended inside a frame")
    return decode(body)


def decode(body: bytes) -> dict:
    """Parse a frame body, insisting on a JSON object."""
    try:
        message = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"frame is not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise ProtocolError(f"frame is a {type(message).__name__}, expected an object")
    return message


class FrameBuffer:
    """Incremental frame parser for non-blocking reads."""

    def __init__(self) -> None:
        self._data = bytearray()

    def feed(self, data: bytes) -> list[dict]:
        """Add bytes; return every complete message now available."""
        self._data += data
        messages = []
        while len(self._data) >= _HEADER.size:
            (size,) = _HEADER.unpack_from(self._data)
            if size > MAX_FRAME:
                raise ProtocolError(f"announced frame of {size} bytes exceeds {MAX_FRAME}")
            end = _HEADER.size + size
            if len(self._data) < end:
                break
            messages.append(decode(bytes(self._data[_HEADER.size : end])))
            del self._data[:end]
        return messages


def string_field(message: dict, key: str, *, optional: bool = False) -> str | None:
    """Fetch ``message[key]`` insisting it is a str (or None/absent when ``optional``)."""
    value = message.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise ProtocolError(f"field {key!r} is {type(value).__name__}, expected str")
    return value
