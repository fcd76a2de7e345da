"""Resumable-upload chunks in the object store: any replica receives, any completes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from fma_connect.server.chunk_writes import ChunkWriters
from fma_connect.server.errors import HTTPError
from fma_connect.server.object_store import (
    MIN_PART_SIZE,
    ObjectStoreError,
    S3BlobStore,
    make_client,
)
from fma_connect.server.object_store_uploads import S3UploadParts

if TYPE_CHECKING:
    from s3_support import S3Bucket

UPLOAD = "ab" * 16


def _replica(bucket: S3Bucket, data_dir: Path, **options: float) -> S3UploadParts:
    """One server's view of the bucket (replicas may share a data directory, too)."""
    store = S3BlobStore(
        make_client(bucket.endpoint_url), bucket.name, "p", data_dir, part_size=MIN_PART_SIZE
    )
    for name, value in options.items():
        setattr(store, name, value)
    parts = store.upload_parts(data_dir)
    assert isinstance(parts, S3UploadParts)
    return parts


def _data(nbytes: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, nbytes, dtype=np.uint8).tobytes()


def _receive(parts: S3UploadParts, index: int, chunk: bytes, offset: int) -> bool:
    """What the chunk route does with a chunk's bytes, then the publish before the record."""
    writers = ChunkWriters(parts)
    claim = writers.claim(UPLOAD, index)
    fd = os.open(parts.target(UPLOAD), os.O_WRONLY)
    try:
        assert writers.write(claim, UPLOAD, index, fd, chunk, offset)
    finally:
        os.close(fd)
    published = writers.publish(claim, UPLOAD, index)
    writers.release(claim, UPLOAD, index, len(chunk))
    return published


@pytest.mark.parametrize("chunk_size", [MIN_PART_SIZE, 64 << 10])
def test_chunks_received_by_different_replicas_are_completed_by_a_third(
    s3_bucket: S3Bucket, tmp_path: Path, chunk_size: int
) -> None:
    """Chunks of 5 MiB+ are copied into the blob by the store; smaller ones are uploaded."""
    size = 2 * chunk_size + 1000
    data = _data(size)
    first, second = _replica(s3_bucket, tmp_path), _replica(s3_bucket, tmp_path)
    for index, offset in enumerate(range(0, size, chunk_size)):
        replica = first if index % 2 else second
        assert _receive(replica, index, data[offset : offset + chunk_size], offset)
    assert s3_bucket.keys("p/uploads/") == [f"p/uploads/{UPLOAD}/{i:05d}" for i in range(3)]
    completing = _replica(s3_bucket, tmp_path)
    with completing.assemble(UPLOAD, size, chunk_size) as writer:
        assert writer.nbytes == size and bytes(writer.contents()) == data  # what is checked
        name = writer.commit()
    assert bytes(completing.store.read(name)) == data
    completing.discard(UPLOAD)
    assert s3_bucket.keys("p/uploads/") == []
    assert s3_bucket.multipart_uploads() == []


def test_a_published_chunk_frees_its_local_bytes(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    parts = _replica(s3_bucket, tmp_path)
    assert _receive(parts, 0, _data(1 << 20), 0)
    assert os.stat(parts.path(UPLOAD)).st_blocks == 0  # a hole: only chunks in flight use disk


def test_a_chunk_taken_over_by_a_newer_request_is_published_with_the_newer_bytes(
    s3_bucket: S3Bucket, tmp_path: Path
) -> None:
    parts = _replica(s3_bucket, tmp_path)
    writers = ChunkWriters(parts)
    fd = os.open(parts.target(UPLOAD), os.O_WRONLY)
    try:
        older = writers.claim(UPLOAD, 0)
        assert writers.write(older, UPLOAD, 0, fd, b"old" * 100, 0)
        newer = writers.claim(UPLOAD, 0)  # the client sent it again
        assert writers.write(newer, UPLOAD, 0, fd, b"new" * 100, 0)
    finally:
        os.close(fd)
    assert not writers.publish(older, UPLOAD, 0)
    assert s3_bucket.keys("p/uploads/") == []
    assert writers.publish(newer, UPLOAD, 0)
    body = s3_bucket.client.get_object(Bucket=s3_bucket.name, Key=parts.key(UPLOAD, 0))["Body"]
    assert body.read() == b"new" * 100


def test_a_chunk_taken_over_while_it_is_copied_is_not_published(
    s3_bucket: S3Bucket, tmp_path: Path
) -> None:
    parts = _replica(s3_bucket, tmp_path)
    with open(parts.target(UPLOAD), "wb") as file:
        file.write(b"x" * 1000)
    assert not parts.publish(UPLOAD, 0, 0, 1000, lambda: False)
    assert s3_bucket.keys() == []
    assert parts.publish(UPLOAD, 0, 0, 1000, lambda: True)
    assert s3_bucket.keys() == [parts.key(UPLOAD, 0)]


def test_a_chunk_of_an_upload_gone_meanwhile_is_not_published(
    s3_bucket: S3Bucket, tmp_path: Path
) -> None:
    parts = _replica(s3_bucket, tmp_path)
    assert not parts.publish(UPLOAD, 0, 0, 10, lambda: True)
    assert s3_bucket.keys() == []


def test_chunks_the_server_held_already_are_published_as_they_are_copied(
    s3_bucket: S3Bucket, tmp_path: Path
) -> None:
    parts = _replica(s3_bucket, tmp_path)
    parts.create(UPLOAD, 70_000)
    parts.put(UPLOAD, 1, 65_536, b"k" * 4464)
    with pytest.raises(HTTPError) as missing:
        parts.assemble(UPLOAD, 70_000, 65_536)
    assert missing.value.status == 409 and missing.value.body["missing"] == [0]
    assert list(parts.store.directory.glob(".tmp-*")) == []  # the spool was discarded


def test_discarding_an_upload_deletes_its_chunks_only(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    parts = _replica(s3_bucket, tmp_path)
    other = "cd" * 16
    parts.put(UPLOAD, 0, 0, b"a")
    parts.put(other, 0, 0, b"b")
    parts.target(UPLOAD)
    parts.discard(UPLOAD)
    assert s3_bucket.keys() == [parts.key(other, 0)]
    assert not parts.path(UPLOAD).exists()


def test_the_sweep_deletes_old_chunks_of_uploads_no_row_owns(
    s3_bucket: S3Bucket, tmp_path: Path
) -> None:
    owned, orphan = "cd" * 16, UPLOAD
    parts = _replica(s3_bucket, tmp_path)
    parts.put(owned, 0, 0, b"a")
    parts.put(orphan, 0, 0, b"b")
    parts.put(orphan, 1, 1, b"c")
    assert parts.sweep({owned}) == 0  # young: another replica may have just opened it
    assert len(s3_bucket.keys()) == 3
    elder = _replica(s3_bucket, tmp_path, sweep_grace=0)
    assert elder.sweep({owned}) == 2  # the orphan upload, and the first replica's scratch
    assert s3_bucket.keys() == [parts.key(owned, 0)]


def test_files_of_uploads_idle_here_for_the_grace_are_retired(
    s3_bucket: S3Bucket, tmp_path: Path
) -> None:
    """A replica's file of an upload completed elsewhere does not stay for its lifetime."""
    parts = _replica(s3_bucket, tmp_path, sweep_grace=0)
    idle = "cd" * 16
    parts.target(idle)
    parts._scanned = float("-inf")  # a minute has passed since the last look
    parts.target(UPLOAD)
    assert not parts.path(idle).exists() and parts.path(UPLOAD).exists()
    kept = _replica(s3_bucket, tmp_path)  # the default grace: an hour
    kept.target(idle)
    kept._scanned = float("-inf")
    kept.target(UPLOAD)
    assert kept.path(idle).exists()


def test_a_chunk_the_store_does_not_take_is_answered_503_to_be_sent_again(
    s3_bucket: S3Bucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parts = _replica(s3_bucket, tmp_path)

    def unavailable(fd: int, nbytes: int, key: str) -> None:
        raise ObjectStoreError(f"writing {key}: the object store answered SlowDown")

    monkeypatch.setattr(parts.store, "put_file", unavailable)
    with pytest.raises(HTTPError) as refused:
        _receive(parts, 0, b"z" * 100, 0)
    assert refused.value.status == 503 and refused.value.headers["Retry-After"]
    assert "SlowDown" in refused.value.body["detail"]
    assert "send it again" in refused.value.body["detail"]


def test_a_completion_the_store_cannot_serve_is_answered_503(
    s3_bucket: S3Bucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parts = _replica(s3_bucket, tmp_path)
    parts.put(UPLOAD, 0, 0, b"a" * 10)

    def unavailable(*args: object) -> None:
        raise ObjectStoreError("reading: the object store answered InternalError")

    monkeypatch.setattr(parts.store, "download", unavailable)
    with pytest.raises(HTTPError) as refused:
        parts.assemble(UPLOAD, 10, 65_536)
    assert refused.value.status == 503 and "InternalError" in refused.value.body["detail"]
    assert list(parts.store.directory.glob(".tmp-*")) == []
