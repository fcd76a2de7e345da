"""Request bodies both transports send: JSON bytes, and :class:`Chunks` of buffers.

An upload goes out as the caller's own buffers, in :data:`SEND_SLICE` slices (views, not
copies), with progress after each; :func:`dumps_json` writes a JSON body.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import orjson

from ._messages import Progress
from .exceptions import EncodeError

__all__ = ["SEND_SLICE", "Chunks", "Progress", "dumps_json"]

#: Largest slice of an upload handed to the socket at once (see :class:`Chunks`).
SEND_SLICE = 1 << 20


def dumps_json(value: Any) -> bytes:
    """Serialise ``value`` with orjson; numpy arrays and scalars are written natively.

    Raises:
        EncodeError: ``value`` holds something JSON cannot carry.
    """
    try:
        return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)
    except TypeError as exc:  # orjson.JSONEncodeError
        raise EncodeError(f"cannot write this as JSON: {exc}") from exc


class Chunks:
    """A request body made of buffers sent one after another, with a known length.

    requests sends a sized iterable with a Content-Length and no copies; a generator
    would be sent chunked, and a joined ``bytes`` would copy the whole payload.
    Each buffer goes out in slices of at most :data:`SEND_SLICE` bytes (views, not
    copies): the socket timeout then bounds each slice, so it limits a stalled
    upload, not a long one, and ``progress`` is called after every slice.
    """

    def __init__(self, chunks: Sequence[Any], progress: Progress | None = None) -> None:
        self._chunks = [memoryview(c).cast("B") for c in chunks]
        self._progress = progress
        self.nbytes = sum(c.nbytes for c in self._chunks)

    def __len__(self) -> int:
        return self.nbytes

    def __iter__(self) -> Iterator[memoryview]:
        sent = 0
        for chunk in self._chunks:
            for start in range(0, chunk.nbytes, SEND_SLICE):
                piece = chunk[start : start + SEND_SLICE]
                yield piece
                sent += piece.nbytes
                if self._progress is not None:
                    self._progress(sent, self.nbytes)
