"""Writes into files that take every byte, in slices the page cache takes fast.

:func:`write_all` writes at a file offset, :func:`append_all` to a file object. Both
hand the kernel at most :data:`WRITE_SLICE` bytes per call: on Linux 6.18 with ext4, a
write that covers a whole aligned 2 MiB range makes the page cache allocate a 2 MiB
folio, and on this project's VM those are slow to come by (most likely the blocks it
has given back to its host). 1 GiB written in 2 MiB to 16 MiB writes took 0.76-3.29 s
there, in 256 KiB to 1.5 MiB writes 0.22-0.49 s (2026-12-02, docs/PERFORMANCE.md).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from typing import IO, Any

__all__ = ["WRITE_SLICE", "append_all", "write_all"]

#: Most bytes handed to one write call (see the module's docstring).
WRITE_SLICE = 1 << 20


def _slices(data: Any) -> Iterator[memoryview]:
    """Views of ``data`` (bytes-like), in order, of at most :data:`WRITE_SLICE` bytes."""
    view = memoryview(data).cast("B")
    for at in range(0, view.nbytes, WRITE_SLICE):
        yield view[at : at + WRITE_SLICE]


def write_all(fd: int, data: Any, at: int) -> int:
    """Write every byte of ``data`` (bytes-like) at offset ``at`` of ``fd``; return the
    end offset.

    A ``pwrite`` call usually takes its whole slice; one that takes fewer bytes (a
    signal, a file system's limit per call) is followed by another for the rest, so no
    byte is ever dropped unnoticed (an error raises ``OSError``).
    """
    for piece in _slices(data):
        while piece.nbytes:
            done = os.pwrite(fd, piece, at)
            if not done:  # no file system does this for a regular file; never loop on it
                raise OSError(errno.EIO, f"a write at offset {at} took no byte")
            at += done
            piece = piece[done:]
    return at


def append_all(file: IO[bytes], data: Any) -> int:
    """Append every byte of ``data`` (bytes-like) to ``file`` (a buffered binary file,
    which writes each slice whole or raises); return how many bytes that was."""
    written = 0
    for piece in _slices(data):
        written += file.write(piece)
    return written
