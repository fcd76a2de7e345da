"""Blob files written with background syncs: the same bytes, and no sync error lost."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from fma_connect.server import blobs
from fma_connect.server.blobs import BlobStore


def test_a_blob_synced_as_it_is_written_holds_every_byte(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(blobs, "SYNC_EVERY", 1000)
    synced: list[int] = []
    real = os.fdatasync

    def counting(fd: int) -> None:
        synced.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", counting)
    store = BlobStore(tmp_path)
    chunks = [bytes([i]) * 700 for i in range(40)]
    name, nbytes = store.write(chunks)
    assert nbytes == 28_000
    assert (store.directory / name).read_bytes() == b"".join(chunks)
    assert synced  # background syncs ran while it was written


def test_a_background_sync_error_fails_the_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Linux reports a writeback error to one sync only: the commit must not miss it."""
    monkeypatch.setattr(blobs, "SYNC_EVERY", 1000)

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "fdatasync", failing)
    store = BlobStore(tmp_path)
    with store.writer() as writer:
        writer.write(b"x" * 5000)
        with pytest.raises(OSError, match="I/O error"):
            writer.commit()
    assert not list(store.directory.iterdir())  # discarded: nothing half-written stays
