"""The S3 blob store against moto's server on loopback: writes, reads, ranges, sweeps."""

from __future__ import annotations

import mmap
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import numpy as np
import pytest

from fma_connect.server.blobs import BlobStore, BlobStream, open_blob_store
from fma_connect.server.object_store import (
    MIN_PART_SIZE,
    ObjectStoreError,
    S3BlobStore,
    make_client,
)

if TYPE_CHECKING:
    from s3_support import S3Bucket

PART = MIN_PART_SIZE


def _store(bucket: S3Bucket, tmp_path: Path, **options: Any) -> S3BlobStore:
    client = make_client(bucket.endpoint_url)
    return S3BlobStore(client, bucket.name, "deploy/one", tmp_path, part_size=PART, **options)


def _data(nbytes: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, nbytes, dtype=np.uint8).tobytes()


def _stream(store: S3BlobStore, name: str, start: int = 0, end: int | None = None) -> bytes:
    async def collect() -> bytes:
        stream = store.stream_file(name, start, end)
        try:
            return b"".join([bytes(chunk) async for chunk in stream])
        finally:
            await stream.aclose()

    return anyio.run(collect)


def test_a_committed_blob_is_one_object_under_the_prefix_and_reads_back(
    s3_bucket: S3Bucket, tmp_path: Path
) -> None:
    store = _store(s3_bucket, tmp_path)
    data = _data(100_000)
    name, nbytes = store.write([data[:10], data[10:]])
    assert nbytes == len(data)
    assert s3_bucket.keys() == [f"deploy/one/blobs/{name}"]
    assert bytes(store.read(name)) == data
    assert store.read_range(name, 99_990, 10) == data[99_990:]
    assert store.read_range(name, 99_990, 11) is None  # past the end: not silently short
    assert b"".join(store.iter_file(name)) == data
    assert list(store.directory.iterdir()) == []  # the spool went with the commit


def test_a_large_blob_goes_up_in_parts_and_is_read_in_ranges(
    s3_bucket: S3Bucket, tmp_path: Path
) -> None:
    store = _store(s3_bucket, tmp_path)
    data = _data(2 * PART + 12_345)
    name, _ = store.write([data[i : i + 1_000_000] for i in range(0, len(data), 1_000_000)])
    head = s3_bucket.client.head_object(Bucket=s3_bucket.name, Key=store.key(name))
    assert head["ETag"].strip('"').endswith("-3")  # a multipart object of three parts
    mapped = store.read(name)
    assert bytes(mapped) == data  # three ranged GETs, put together in place
    assert s3_bucket.multipart_uploads() == []


def test_an_empty_blob_reads_as_empty(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    store = _store(s3_bucket, tmp_path)
    name, nbytes = store.write([])
    assert nbytes == 0 and store.read(name) == b"" and _stream(store, name) == b""


def test_a_discarded_writer_leaves_no_object_and_no_spool(
    s3_bucket: S3Bucket, tmp_path: Path
) -> None:
    store = _store(s3_bucket, tmp_path)
    with store.writer() as writer:
        writer.write(b"x" * 1000)
    assert s3_bucket.keys() == [] and list(store.directory.iterdir()) == []


@pytest.mark.parametrize("fail_at", [1, 3])
def test_a_part_that_fails_aborts_the_whole_upload(
    s3_bucket: S3Bucket, tmp_path: Path, fail_at: int
) -> None:
    store = _store(s3_bucket, tmp_path)
    real = store.client.upload_part

    def failing(**kwargs: Any) -> Any:
        if kwargs["PartNumber"] == fail_at:
            raise ConnectionResetError("the store went away")
        return real(**kwargs)

    store.client.upload_part = failing  # type: ignore[method-assign]
    with store.writer() as writer:
        writer.write(_data(2 * PART + 1))
        with pytest.raises(ConnectionResetError):
            writer.commit()
    assert s3_bucket.keys() == []
    assert s3_bucket.multipart_uploads() == []  # aborted: no parts left behind
    assert list(store.directory.iterdir()) == []


def test_a_blob_filled_through_its_map_is_uploaded_as_written(
    s3_bucket: S3Bucket, tmp_path: Path
) -> None:
    """The in-place round result: computed into the spool file's map, then uploaded."""
    store = _store(s3_bucket, tmp_path)
    data = _data(PART + 100)
    with store.writer() as writer:
        mapped = writer.map(len(data))
        mapped[:] = data
        name = writer.commit()
    assert bytes(store.read(name)) == data


@pytest.mark.parametrize(
    ("start", "end"), [(0, None), (0, 1), (5, 2 << 20), ((1 << 20) - 1, (1 << 20) + 1), (7, None)]
)
def test_a_stream_serves_the_span_asked_for(
    s3_bucket: S3Bucket, tmp_path: Path, start: int, end: int | None
) -> None:
    store = _store(s3_bucket, tmp_path)
    data = _data(3 << 20)
    name, _ = store.write([data])
    assert _stream(store, name, start, end) == data[start:end]


def test_a_stream_past_the_end_is_empty(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    store = _store(s3_bucket, tmp_path)
    name, _ = store.write([b"abc"])
    assert _stream(store, name, 3) == b""


def test_a_stream_whose_connection_breaks_reads_on_from_where_it_broke(
    s3_bucket: S3Bucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _store(s3_bucket, tmp_path)
    data = _data(3 << 20)
    name, _ = store.write([data])
    real = store.open_range
    opened: list[int] = []

    def breaking(key: str, start: int, stop: int | None) -> Any:
        body = real(key, start, stop)
        opened.append(start)
        if len(opened) == 1:  # the first connection breaks after one chunk
            read = body.read
            calls = iter(range(10))

            def read_then_break(amount: int) -> bytes:
                if next(calls) == 1:
                    raise ConnectionResetError("reset by peer")
                chunk: bytes = read(amount)
                return chunk

            body.read = read_then_break
        return body

    monkeypatch.setattr(store, "open_range", breaking)
    assert _stream(store, name, 10) == data[10:]
    assert opened == [10, 10 + (1 << 20)]


def test_a_blob_deleted_is_gone_and_reading_it_says_so(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    store = _store(s3_bucket, tmp_path)
    kept, _ = store.write([b"kept"])
    gone, _ = store.write([b"gone"])
    store.delete([gone])
    assert s3_bucket.keys() == [f"deploy/one/blobs/{kept}"]
    with pytest.raises(FileNotFoundError):
        store.read(gone)
    assert store.read_range(gone, 0, 1) is None
    store.delete([gone])  # deleting again is no error


def test_a_name_the_server_never_gives_is_refused(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    store = _store(s3_bucket, tmp_path)
    with pytest.raises(ValueError, match="not a blob file name"):
        store.read("../../etc/passwd")
    with pytest.raises(ValueError, match="not a file"):
        store.path("0" * 32 + ".blob")


def test_the_sweep_removes_old_unreferenced_blobs_and_unfinished_uploads_only(
    s3_bucket: S3Bucket, tmp_path: Path
) -> None:
    store = _store(s3_bucket, tmp_path)
    kept, _ = store.write([b"kept"])
    store.write([b"orphan"])
    store.sweep({kept})
    assert len(s3_bucket.keys()) == 2  # young: another replica may be committing the orphan
    s3_bucket.client.create_multipart_upload(Bucket=s3_bucket.name, Key="deploy/one/blobs/x")
    elder = _store(s3_bucket, tmp_path, sweep_grace=0)
    assert elder.sweep({kept}) == 3  # the orphan, the unfinished upload, the other's scratch
    assert s3_bucket.keys() == [f"deploy/one/blobs/{kept}"]
    assert s3_bucket.multipart_uploads() == []
    assert [p.name for p in (tmp_path / "blob-spool").iterdir()] == [elder.directory.name]


def test_other_prefixes_of_the_bucket_are_left_alone(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key="deploy/two/blobs/a.blob", Body=b"x")
    store = _store(s3_bucket, tmp_path, sweep_grace=0)
    store.sweep(set())
    assert s3_bucket.keys() == ["deploy/two/blobs/a.blob"]


def test_open_blob_store_picks_the_backend_from_the_url(
    s3_bucket: S3Bucket, tmp_path: Path
) -> None:
    local = open_blob_store(None, tmp_path)
    assert type(local) is BlobStore and local.directory == tmp_path / "blobs"
    remote = open_blob_store(
        f"s3://{s3_bucket.name}/a/b/", tmp_path, endpoint_url=s3_bucket.endpoint_url
    )
    assert isinstance(remote, S3BlobStore) and remote.prefix == "a/b/"
    name, _ = remote.write([b"z"])
    assert s3_bucket.keys() == [f"a/b/blobs/{name}"]
    at_root = open_blob_store(f"s3://{s3_bucket.name}", tmp_path)  # AWS_ENDPOINT_URL_S3
    assert isinstance(at_root, S3BlobStore) and at_root.key(name) == f"blobs/{name}"


@pytest.mark.parametrize("url", ["s3://", "gs://bucket/x", "/var/blobs", "s3://b/x?region=1"])
def test_a_url_that_is_not_s3_is_refused_saying_what_is_expected(url: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"expected blobs at s3://bucket"):
        open_blob_store(url, tmp_path)


def test_a_missing_bucket_is_said_at_start_up(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    with pytest.raises(ObjectStoreError, match="checking s3://no-such-bucket"):
        open_blob_store("s3://no-such-bucket", tmp_path, endpoint_url=s3_bucket.endpoint_url)


def test_a_store_error_is_an_os_error_naming_what_was_asked(
    s3_bucket: S3Bucket, tmp_path: Path
) -> None:
    store = _store(s3_bucket, tmp_path)
    name, _ = store.write([b"abc"])
    s3_bucket.client.delete_object(Bucket=s3_bucket.name, Key=store.key(name))
    s3_bucket.client.delete_bucket(Bucket=s3_bucket.name)
    with pytest.raises(OSError, match=f"reading deploy/one/blobs/{name}"):
        store.read(name)


def test_part_sizes_below_s3s_least_are_refused(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="parts of"):
        S3BlobStore(make_client(s3_bucket.endpoint_url), s3_bucket.name, "", tmp_path, part_size=1)


def test_checksums_are_sent_only_where_required_for_s3_compatible_stores() -> None:
    """Several S3-compatible stores refuse the CRC32 headers boto3 sends by default."""
    compatible: Any = make_client("http://127.0.0.1:9").meta.config
    assert compatible.request_checksum_calculation == "when_required"
    aws: Any = make_client(None).meta.config
    assert aws.request_checksum_calculation == "when_supported"


def test_scratch_files_have_no_name(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    store = _store(s3_bucket, tmp_path)
    fd = store.scratch()
    try:
        assert list(store.directory.iterdir()) == [] and os.fstat(fd).st_nlink == 0
    finally:
        os.close(fd)


def test_reads_map_a_file_so_aggregation_reads_slices_from_the_page_cache(
    s3_bucket: S3Bucket, tmp_path: Path
) -> None:
    store = _store(s3_bucket, tmp_path)
    data = _data(1 << 20)
    name, _ = store.write([data])
    mapped = store.read(name)
    assert isinstance(mapped, mmap.mmap) and mapped[100:200] == data[100:200]


@pytest.mark.parametrize("nbytes", [PART, 2 * PART, 2 * PART + 7])
def test_parts_go_up_while_the_blob_is_still_being_written(
    s3_bucket: S3Bucket, tmp_path: Path, nbytes: int
) -> None:
    store = _store(s3_bucket, tmp_path)
    data = _data(nbytes)
    with store.writer() as writer:
        for start in range(0, nbytes, 1 << 20):
            writer.write(data[start : start + (1 << 20)])
        stream = writer._stream
        assert stream is not None and stream.queued == nbytes // PART
        for part in stream._parts:
            part.result()  # sent before the commit: only the tail is left for it
        (upload,) = s3_bucket.client.list_multipart_uploads(Bucket=s3_bucket.name)["Uploads"]
        listed = s3_bucket.client.list_parts(
            Bucket=s3_bucket.name, Key=upload["Key"], UploadId=upload["UploadId"]
        )
        assert len(listed["Parts"]) == nbytes // PART
        assert s3_bucket.keys() == []  # invisible until committed
        name = writer.commit()
    assert bytes(store.read(name)) == data
    assert s3_bucket.multipart_uploads() == []


def test_a_writer_discarded_midway_aborts_its_upload(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    store = _store(s3_bucket, tmp_path)
    with store.writer() as writer:
        writer.write(_data(PART + 10))
        assert writer._stream is not None
        writer._stream._parts[0].result()
    deadline = time.monotonic() + 30  # the abort runs in the background
    while s3_bucket.multipart_uploads() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert s3_bucket.multipart_uploads() == [] and s3_bucket.keys() == []
    assert list(store.directory.iterdir()) == []


def test_at_most_concurrency_parts_are_in_flight(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    """What bounds the memory of a write: parts are read from the spool only when sent."""
    store = _store(s3_bucket, tmp_path, concurrency=2)
    real = store.client.upload_part
    lock = threading.Lock()
    flying, most = 0, 0

    def counting(**kwargs: Any) -> Any:
        nonlocal flying, most
        with lock:
            flying += 1
            most = max(most, flying)
        try:
            return real(**kwargs)
        finally:
            with lock:
                flying -= 1

    store.client.upload_part = counting  # type: ignore[method-assign]
    data = _data(5 * PART)
    name, _ = store.write([data])  # one write: five parts queued at once
    assert 1 <= most <= 2
    assert bytes(store.read(name)) == data


def _counting_gets(store: S3BlobStore) -> list[str]:
    """The keys of the GETs and HEADs the store sends from now on."""
    asked: list[str] = []
    client: Any = store.client
    for name in ("get_object", "head_object"):
        real = getattr(client, name)

        def counting(*args: Any, _real: Any = real, **kwargs: Any) -> Any:
            asked.append(kwargs["Key"])
            return _real(*args, **kwargs)

        setattr(client, name, counting)
    return asked


def test_a_blob_read_again_is_kept_local_and_served_from_there(
    s3_bucket: S3Bucket, tmp_path: Path
) -> None:
    store = _store(s3_bucket, tmp_path)
    data = _data(3 << 20)
    name, _ = store.write([data])
    asked = _counting_gets(store)
    assert bytes(store.read(name)) == data  # read once (an update, by its round): not kept
    assert store.cache.held == 0
    assert bytes(store.read(name)) == data  # read again (a base): kept
    assert store.cache.held == len(data)
    before = len(asked)
    assert bytes(store.read(name)) == data
    stream = store.stream_file(name, 5, 2 << 20)
    assert type(stream) is BlobStream  # a local file's stream, as a local blob's
    assert _stream(store, name, 5, 2 << 20) == data[5 : 2 << 20]
    anyio.run(stream.aclose)
    assert len(asked) == before  # nothing more asked of the store
    store.delete([name])
    assert store.cache.held == 0
    with pytest.raises(FileNotFoundError):
        store.read(name)  # a deleted blob is not served from a copy


def test_the_least_recently_read_blob_goes_first(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    store = _store(s3_bucket, tmp_path, cache_bytes=2 << 20)
    names = [store.write([_data(1 << 20, seed)])[0] for seed in range(3)]
    for name in names[:2]:
        store.read(name)
        store.read(name)
    store.read(names[0])  # names[1] is now the least recently read
    store.read(names[2])
    kept = store.read(names[2])
    assert store.cache.held == 2 << 20
    assert store.cache.mapped(names[1]) is None and store.cache.mapped(names[0]) is not None
    assert bytes(kept) == _data(1 << 20, 2)


def test_no_blob_is_kept_without_room(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    store = _store(s3_bucket, tmp_path, cache_bytes=0)
    name, _ = store.write([b"abc"])
    for _ in range(3):
        assert bytes(store.read(name)) == b"abc"
    assert store.cache.held == 0 and store.cache.mapped(name) is None
