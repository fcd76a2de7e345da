"""Writes at an offset reach the file whole, however few bytes each system call takes."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

from fma_connect.server.file_writes import write_all


def _short_pwrite(most: int) -> Any:
    """``os.pwrite`` that takes at most ``most`` bytes a call, as a call interrupted by a
    signal, or a file system's limit per call, may."""
    real = os.pwrite

    def pwrite(fd: int, data: Any, offset: int) -> int:
        return real(fd, memoryview(data)[:most], offset)

    return pwrite


@pytest.mark.parametrize("most", [1, 7, 4096, 1 << 30])
@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_every_byte_is_written_when_a_call_takes_fewer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, most: int, kind: Any
) -> None:
    data = bytes(range(256)) * 40
    path = tmp_path / "upload.part"
    path.write_bytes(b"-" * 100)
    monkeypatch.setattr(os, "pwrite", _short_pwrite(most))
    fd = os.open(path, os.O_WRONLY)
    try:
        end = write_all(fd, kind(data), 100)
        assert write_all(fd, b"", end) == end  # nothing to write: no call
    finally:
        os.close(fd)
    assert end == 100 + len(data)
    assert path.read_bytes() == b"-" * 100 + data


def test_a_failing_write_raises(tmp_path: Path) -> None:
    path = tmp_path / "upload.part"
    path.touch()
    fd = os.open(path, os.O_RDONLY)  # not writable: EBADF
    try:
        with pytest.raises(OSError, match="Bad file descriptor") as raised:
            write_all(fd, b"x", 0)
    finally:
        os.close(fd)
    assert raised.value.errno == errno.EBADF


def test_a_write_that_takes_no_byte_raises_instead_of_looping(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(os, "pwrite", lambda fd, data, offset: 0)
    with pytest.raises(OSError, match="took no byte"):
        write_all(-1, b"x", 7)
