"""Writes at a file offset that take every byte: :func:`write_all`."""

from __future__ import annotations

import errno
import os
from typing import Any

__all__ = ["write_all"]


def write_all(fd: int, data: Any, at: int) -> int:
    """Write every byte of ``data`` (bytes-like) at offset ``at`` of ``fd``; return the
    end offset.

    One ``pwrite`` call usually takes them all; one that takes fewer bytes (a signal, a
    file system's limit per call) is followed by another for the rest, so no byte is
    ever dropped unnoticed (an error raises ``OSError``).
    """
    view = memoryview(data).cast("B")
    while view.nbytes:
        done = os.pwrite(fd, view, at)
        if not done:  # no file system does this for a regular file; never loop on it
            raise OSError(errno.EIO, f"a write at offset {at} took no byte")
        at += done
        view = view[done:]
    return at
