"""JSON written piece by piece: byte for byte what orjson writes, in bounded memory.

A weights document converted for a download (stored in msgpack, asked for as plain
JSON lists) would be several times the payload as one ``orjson.dumps`` text, and that
text would then sit whole in the connection's send buffer. :func:`pieces` writes the
same bytes as ``orjson.dumps(value, option=OPT_SERIALIZE_NUMPY)`` a slice at a time:
arrays by runs of rows of at most :data:`ITEMS` elements (recursing into a row larger
than that), long strings by slices of :data:`CHARS` characters (JSON escapes one
character at a time, so slices join exactly), containers item by item.
:func:`stream` hands them out in blocks of about 1 MiB, each written in a worker
thread so the event loop does not wait on serialisation.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio.to_thread
import numpy as np
import orjson

__all__ = ["CHARS", "ITEMS", "pieces", "size", "stream"]

#: Array elements per piece (0.5 to 2 MB of text, depending on the dtype).
ITEMS = 1 << 16
#: String characters per piece.
CHARS = 1 << 20
_BLOCK = 1 << 20
_NUMPY = orjson.OPT_SERIALIZE_NUMPY


def pieces(value: Any) -> Iterator[bytes]:
    """Yield ``orjson.dumps(value, option=OPT_SERIALIZE_NUMPY)`` in bounded pieces.

    Raises:
        orjson.JSONEncodeError: what orjson raises for ``value`` (a non-str dict key,
            an unsupported type or array), when the piece holding it is written.
    """
    if isinstance(value, np.ndarray):
        yield from _array(value)
    elif isinstance(value, dict):
        yield b"{"
        for index, (key, item) in enumerate(value.items()):
            if not isinstance(key, str):
                raise orjson.JSONEncodeError("Dict key must be str")
            yield (b",%s:" if index else b"%s:") % orjson.dumps(key)
            yield from pieces(item)
        yield b"}"
    elif isinstance(value, list | tuple):
        yield b"["
        for index, item in enumerate(value):
            if index:
                yield b","
            yield from pieces(item)
        yield b"]"
    elif isinstance(value, str) and len(value) > CHARS:
        yield b'"'
        for start in range(0, len(value), CHARS):
            yield orjson.dumps(value[start : start + CHARS])[1:-1]
        yield b'"'
    else:
        yield orjson.dumps(value, option=_NUMPY)


def size(value: Any) -> int:
    """The length of ``value``'s JSON, found by writing it (piece by piece) and counting.

    Raises:
        orjson.JSONEncodeError: ``value`` cannot be written.
    """
    return sum(len(piece) for piece in pieces(value))


async def stream(value: Any) -> AsyncIterator[bytes]:
    """Yield ``value``'s JSON in blocks of about 1 MiB, each written in a worker thread."""
    parts = pieces(value)

    def block() -> bytes:
        taken: list[bytes] = []
        nbytes = 0
        for piece in parts:
            taken.append(piece)
            nbytes += len(piece)
            if nbytes >= _BLOCK:
                break
        return b"".join(taken)

    while chunk := await anyio.to_thread.run_sync(block):
        yield chunk


def _array(array: np.ndarray) -> Iterator[bytes]:
    if array.ndim == 0 or array.size <= ITEMS:
        yield orjson.dumps(array, option=_NUMPY)
        return
    rows = array.shape[0]
    per_row = array.size // rows
    yield b"["
    if per_row > ITEMS:
        for index in range(rows):
            if index:
                yield b","
            yield from _array(array[index])
    else:
        step = ITEMS // per_row
        for start in range(0, rows, step):
            if start:
                yield b","
            # orjson writes the run as "[row,row,...]": drop its brackets to splice it in.
            yield orjson.dumps(array[start : start + step], option=_NUMPY)[1:-1]
    yield b"]"
