"""Writes at an offset reach the file whole, however few bytes each system call takes."""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from fma_connect.server.file_writes import write_all


def _short_pwritev(most: int) -> Any:
    """``os.pwritev`` that takes at most ``most`` bytes a call, as a call interrupted by a
    signal, or a file system's limit per call, may."""
    real = os.pwritev

    def pwritev(fd: int, buffers: Sequence[Any], offset: int) -> int:
        taken, room = [], most
        for buffer in buffers:
            view = memoryview(buffer)[:room]
            taken.append(view)
            room -= view.nbytes
            if not room:
                break
        return real(fd, taken, offset)

    return pwritev


@pytest.mark.parametrize("most", [1, 7, 4096, 1 << 30])
def test_every_byte_is_written_when_a_call_takes_fewer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, most: int
) -> None:
    pieces = [b"a" * 5000, b"", b"b" * 3, bytearray(b"c" * 9000), memoryview(b"d" * 10)]
    path = tmp_path / "upload.part"
    path.write_bytes(b"-" * 100)
    monkeypatch.setattr(os, "pwritev", _short_pwritev(most))
    fd = os.open(path, os.O_WRONLY)
    try:
        end = write_all(fd, pieces, 100)
    finally:
        os.close(fd)
    expected = b"".join(bytes(piece) for piece in pieces)
    assert end == 100 + len(expected)
    assert path.read_bytes() == b"-" * 100 + expected


def test_more_pieces_than_one_call_takes_are_all_written(tmp_path: Path) -> None:
    pieces = [bytes([i % 256]) for i in range(3000)]  # beyond IOV_MAX (1024) buffers
    path = tmp_path / "upload.part"
    path.touch()
    fd = os.open(path, os.O_WRONLY)
    try:
        assert write_all(fd, pieces, 0) == 3000
    finally:
        os.close(fd)
    assert path.read_bytes() == b"".join(pieces)


def test_a_failing_write_raises(tmp_path: Path) -> None:
    path = tmp_path / "upload.part"
    path.touch()
    fd = os.open(path, os.O_RDONLY)  # not writable: EBADF
    try:
        with pytest.raises(OSError, match="Bad file descriptor") as raised:
            write_all(fd, [b"x"], 0)
    finally:
        os.close(fd)
    assert raised.value.errno == errno.EBADF


def test_a_write_that_takes_no_byte_raises_instead_of_looping(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "pwritev", lambda fd, buffers, offset: 0)
    with pytest.raises(OSError, match="took no byte"):
        write_all(-1, [b"x"], 7)
