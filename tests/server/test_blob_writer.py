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


def test_a_spool_for_an_object_store_is_never_synced_to_local_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The object store makes an S3 blob durable: syncing its local spool would only wait."""
    monkeypatch.setattr(blobs, "SYNC_EVERY", 1000)
    synced: list[int] = []
    monkeypatch.setattr(os, "fdatasync", synced.append)
    directory = tmp_path / "spool"
    directory.mkdir()
    spool = blobs.BlobWriter(directory, sync=False)
    with spool:
        for _ in range(10):
            spool.write(b"y" * 700)
        mapped = blobs.BlobWriter(directory, sync=False)
        with mapped:
            mapped.map(5000)[:4] = b"head"
            assert bytes(mapped.contents()[:4]) == b"head"
    assert synced == []
    assert spool.nbytes == 7000 and list(directory.iterdir()) == []  # both discarded
