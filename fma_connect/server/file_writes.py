"""Writes at a file offset that take every byte: :func:`write_all`."""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from typing import Any

__all__ = ["write_all"]

#: The most buffers one ``pwritev`` takes (IOV_MAX on Linux).
_IOV_MAX = 1024


def write_all(fd: int, pieces: Sequence[Any], at: int) -> int:
    """Write every byte of ``pieces`` at offset ``at`` of ``fd``; return the end offset.

    One ``pwritev`` call usually takes them all; one that takes fewer bytes (a signal, a
    file system's limit per call) is followed by another for the rest, so no byte is
    ever dropped unnoticed (an error raises ``OSError``).
    """
    views = [memoryview(piece).cast("B") for piece in pieces]
    views = [view for view in views if view.nbytes]
    while views:
        done = os.pwritev(fd, views[:_IOV_MAX], at)
        if not done:  # no file system does this for a regular file; never loop on it
            raise OSError(errno.EIO, f"a write at offset {at} took no byte")
        at += done
        while views and done >= views[0].nbytes:
            done -= views.pop(0).nbytes
        if done:
            views[0] = views[0][done:]
    return at
