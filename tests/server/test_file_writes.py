"""Writes reach the file whole, however few bytes each system call takes, and no call
is handed more than a slice (large page-cache folios are slow to come by)."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

from fma_connect.server.blobs import BlobWriter
from fma_connect.server.file_writes import WRITE_SLICE, append_all, write_all


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


def _payload(nbytes: int) -> bytes:
    return (bytes(range(251)) * (nbytes // 251 + 1))[:nbytes]


def test_a_large_write_goes_in_slices_at_their_offsets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _payload(3 * WRITE_SLICE + 12345)
    calls: list[tuple[int, int]] = []
    real = os.pwrite

    def pwrite(fd: int, piece: Any, offset: int) -> int:
        calls.append((offset, memoryview(piece).nbytes))
        return real(fd, piece, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    path = tmp_path / "upload.part"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        assert write_all(fd, memoryview(data), 10) == 10 + len(data)
    finally:
        os.close(fd)
    assert calls == [
        (10, WRITE_SLICE),
        (10 + WRITE_SLICE, WRITE_SLICE),
        (10 + 2 * WRITE_SLICE, WRITE_SLICE),
        (10 + 3 * WRITE_SLICE, 12345),
    ]
    assert path.read_bytes() == bytes(10) + data


class _Recording:
    """A binary file (``into``, or none) that records the size of each write it is
    handed."""

    def __init__(self, into: Any = None) -> None:
        self.sizes: list[int] = []
        self.data = bytearray()
        self._into = into

    def write(self, piece: Any) -> int:
        self.sizes.append(memoryview(piece).nbytes)
        self.data += piece
        return memoryview(piece).nbytes if self._into is None else self._into.write(piece)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._into, name)


def test_appends_go_in_slices() -> None:
    data = _payload(2 * WRITE_SLICE + 1)
    file = _Recording()
    assert append_all(file, data) == len(data)  # type: ignore[arg-type]
    assert file.sizes == [WRITE_SLICE, WRITE_SLICE, 1]
    assert file.data == data


def test_a_blob_written_in_large_chunks_is_written_in_slices(tmp_path: Path) -> None:
    data = _payload(5 * WRITE_SLICE // 2)
    with BlobWriter(tmp_path) as writer:
        recording = _Recording(writer._file)
        writer._file = recording  # type: ignore[assignment]
        writer.write(data)
        writer.write(b"tail")
        assert recording.sizes == [WRITE_SLICE, WRITE_SLICE, WRITE_SLICE // 2, 4]
        assert writer.nbytes == len(data) + 4
        name = writer.commit()
    assert (tmp_path / name).read_bytes() == data + b"tail"


@pytest.mark.parametrize("nbytes", [10, 3 * WRITE_SLICE + 10])
def test_a_blob_to_fill_through_its_map_is_written_as_zeros_first(
    tmp_path: Path, nbytes: int
) -> None:
    with BlobWriter(tmp_path) as writer:
        mapped = writer.map(nbytes)
        # Written, not a sparse file: every block is there (the page cache holds them).
        assert os.stat(writer.temp_path).st_blocks * 512 >= nbytes
        assert mapped[:] == bytes(nbytes)
        mapped[nbytes // 2 : nbytes // 2 + 4] = b"data"
        name = writer.commit()
    expected = bytearray(nbytes)
    expected[nbytes // 2 : nbytes // 2 + 4] = b"data"
    assert (tmp_path / name).read_bytes() == expected
