"""Payloads of the reference server (blobs): written atomically, named by the server.

:class:`BlobStore` is both the interface every caller uses (routes, rounds, uploads,
aggregation) and its embedded default, a local directory; :func:`open_blob_store`
picks the store a server runs on: this directory, or S3-compatible object storage
(:class:`~.object_store.S3BlobStore`, ``s3://bucket/prefix``), which overrides each
method and keeps the same guarantees.

In the directory, a blob is written to a temporary file, flushed and fsynced, then
renamed into place with :func:`os.replace` and the directory fsynced: after a crash a
blob either exists whole or not at all. File names are random and never derived from
user input. Temporary files and blobs no row points at (left by a crash between the
rename and the database commit) are removed by :meth:`BlobStore.sweep` at start-up.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import re
import secrets
import threading
from collections.abc import AsyncGenerator, Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, BinaryIO, Self
from urllib.parse import urlsplit

import anyio.to_thread

from .file_writes import WRITE_SLICE, append_all

if TYPE_CHECKING:
    from .upload_parts import UploadParts

__all__ = ["BlobStore", "BlobStream", "BlobWriter", "open_blob_store"]

_TMP_PREFIX = ".tmp-"
_ZEROS = bytes(WRITE_SLICE)
_SUFFIX = ".blob"
#: What :meth:`BlobWriter.commit` names blobs: 32 hex digits and the suffix, nothing else.
_BLOB_NAME = re.compile(r"[0-9a-f]{32}\.blob")
CHUNK = 1 << 20
#: Bytes written between two background syncs of a blob being written (see BlobWriter).
SYNC_EVERY = 64 << 20
#: Bytes of a blob read into the page cache per worker-thread hop when serving it.
READ_BLOCK = 16 << 20


class BlobWriter:
    """A blob being written; :meth:`commit` makes it durable, anything else discards it.

    Use as a context manager: leaving the block without :meth:`commit` deletes the
    temporary file.

    A large blob is synced to disk as it is written: every :data:`SYNC_EVERY` bytes a
    worker thread runs ``fdatasync`` on what was written so far, so the disk writes while
    the next bytes arrive, and the sync at :meth:`commit` has only the tail left. The
    guarantee is the commit's, as before: a blob is durable once it returns.
    """

    def __init__(self, directory: Path, written: Path | None = None, *, sync: bool = True) -> None:
        """
        Args:
            directory: The blob directory.
            written: A file written elsewhere on the same file system (a finished
                resumable upload), moved in to be committed or discarded as it is.
            sync: Sync the file to disk as it grows (False: a spool whose bytes go
                elsewhere at the commit, as an object store's writer does).
        """
        self._directory = directory
        self._sync_enabled = sync
        self.temp_path = directory / f"{_TMP_PREFIX}{secrets.token_hex(16)}"
        if written is not None:
            os.replace(written, self.temp_path)
        # "xb" for a new file; "ab" for a moved-in one, so nothing can truncate it.
        self._file = open(self.temp_path, "ab" if written else "xb")  # noqa: SIM115  (see commit)
        self.nbytes = self._file.tell()
        self.filename: str | None = None
        self._synced_to = 0
        self._syncing: threading.Thread | None = None
        self._sync_error: OSError | None = None
        self._map: mmap.mmap | None = None
        self._mapped_done = threading.Event()

    def write(self, chunk: Any) -> None:
        """Append a bytes-like chunk."""
        self.nbytes += append_all(self._file, chunk)
        if not self._sync_enabled:
            return
        if self.nbytes - self._synced_to >= SYNC_EVERY and not self._sync_running():
            self._file.flush()
            self._synced_to = self.nbytes
            self._syncing = threading.Thread(
                target=self._datasync, name="fma-blob-sync", daemon=True
            )
            self._syncing.start()

    def _datasync(self) -> None:
        # Linux reports a writeback error to one sync only: kept for the commit to raise.
        try:
            os.fdatasync(self._file.fileno())
        except OSError as exc:
            self._sync_error = exc

    def _sync_running(self) -> bool:
        return self._syncing is not None and self._syncing.is_alive()

    def _join_sync(self) -> None:
        self._mapped_done.set()
        if self._syncing is not None:
            self._syncing.join()
            self._syncing = None

    def map(self, nbytes: int) -> mmap.mmap:
        """Make the blob ``nbytes`` long (zeros) and map it writable, to be filled in place.

        For bytes computed straight into the file rather than computed in memory and
        then written (see :class:`~.in_place.InPlace`): the pages written are the page
        cache's, touched once. :meth:`commit` syncs what was written through the map.
        Call once, instead of :meth:`write`. Until the commit, a worker thread syncs
        what has been written so far again and again, so the disk writes while the map
        is filled, as :meth:`write`'s background syncs do.
        """
        self._file.flush()
        # Zeros written, not a file truncated to length: the page cache then holds the
        # pages in small folios (see .file_writes) before the map touches them. Filled
        # through a map with a sync behind it, 1 GiB took 1.98-2.72 s here after a
        # truncate, 0.93-1.32 s after the zeros were written (2026-12-02).
        for _ in range(nbytes // WRITE_SLICE):
            self._file.write(_ZEROS)
        self._file.write(memoryview(_ZEROS)[: nbytes % WRITE_SLICE])
        self._file.flush()
        self.nbytes = nbytes
        # The blob's own descriptor is write-only; a shared map needs one opened to read.
        fd = os.open(self.temp_path, os.O_RDWR)
        try:
            self._map = mmap.mmap(fd, nbytes)
        finally:
            os.close(fd)
        if self._sync_enabled:
            self._syncing = threading.Thread(
                target=self._sync_behind, name="fma-blob-sync", daemon=True
            )
            self._syncing.start()
        return self._map

    def _sync_behind(self) -> None:
        while self._sync_error is None and not self._mapped_done.wait(0.02):
            self._datasync()

    def contents(self) -> Any:
        """Flush what was written and map it read-only (see :meth:`BlobStore.read`)."""
        self._file.flush()
        return _map(self.temp_path)

    def commit(self) -> str:
        """Sync the data to disk, move it into place and return the blob's file name."""
        self._file.flush()
        self._join_sync()
        if self._map is not None:
            self._map.flush()  # msync: POSIX's way to make a map's writes durable
        if self._sync_error is not None:
            raise self._sync_error
        os.fsync(self._file.fileno())
        self._file.close()
        name = f"{secrets.token_hex(16)}{_SUFFIX}"
        os.replace(self.temp_path, self._directory / name)
        _fsync_dir(self._directory)
        self.filename = name
        return name

    def discard(self) -> None:
        """Delete the temporary file (no-op after :meth:`commit`)."""
        if self.filename is None:
            self._join_sync()  # the worker holds the file's descriptor
            self._file.close()
            self.temp_path.unlink(missing_ok=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.discard()


class BlobStore:
    """The blob files under ``<data_dir>/blobs``; the interface of every blob store.

    A blob is named by the server when it is committed (:meth:`BlobWriter.commit`),
    never changes afterwards, and is read whole (:meth:`read`), in a span
    (:meth:`read_range`) or streamed to a response (:meth:`stream_file`). The bytes
    of open resumable uploads are kept by :meth:`upload_parts`.
    """

    #: Whether :meth:`sweep` is safe while other servers write to the same store (a
    #: directory's is not: it deletes what is not referenced yet, whatever its age).
    sweeps_while_shared = False

    def __init__(self, data_dir: Path) -> None:
        self.directory = data_dir / "blobs"
        self.directory.mkdir(parents=True, exist_ok=True)

    def upload_parts(self, data_dir: Path) -> UploadParts:
        """The store of the open resumable uploads' bytes (``<data_dir>/uploads``)."""
        from .upload_parts import UploadParts  # here: it imports this module

        return UploadParts(self, data_dir / "uploads")

    def writer(self) -> BlobWriter:
        """Start a new blob."""
        return BlobWriter(self.directory)

    def adopt(self, path: Path) -> BlobWriter:
        """Move the finished file ``path`` in as a blob to commit (or discard)."""
        return BlobWriter(self.directory, path)

    def write(self, chunks: Iterable[Any]) -> tuple[str, int]:
        """Write a blob from bytes-like chunks; return ``(file name, size)``."""
        with self.writer() as writer:
            for chunk in chunks:
                writer.write(chunk)
            return writer.commit(), writer.nbytes

    def path(self, filename: str) -> Path:
        """Return the path of a blob.

        Raises:
            ValueError: ``filename`` is not a name the server gives blobs, so no stored
                or forged name can reach a file outside the blob directory.
        """
        if not _BLOB_NAME.fullmatch(filename):
            raise ValueError(f"not a blob file name: {filename!r}")
        return self.directory / filename

    def read(self, filename: str) -> Any:
        """Map a blob into memory read-only (bytes for an empty file).

        The map is released when the last array viewing it is garbage collected.
        """
        return _map(self.path(filename))

    def read_range(self, filename: str, offset: int, length: int) -> bytes | None:
        """The ``length`` bytes of a blob from ``offset``; None if the blob is gone, its
        name is not a blob's, or it is shorter."""
        try:
            with open(self.path(filename), "rb") as file:
                data = os.pread(file.fileno(), length, offset)
        except (OSError, ValueError):
            return None
        return data if len(data) == length else None

    def iter_file(self, filename: str) -> Iterator[bytes]:
        """Open a blob now and return an iterator over its bytes in 1 MiB chunks.

        Opening before iterating means a blob deleted meanwhile is still served whole.
        """
        file = open(self.path(filename), "rb")  # noqa: SIM115  (closed by the generator)

        def chunks() -> Iterator[bytes]:
            with file:
                while chunk := file.read(CHUNK):
                    yield chunk

        return chunks()

    def stream_file(self, filename: str, start: int = 0, end: int | None = None) -> BlobStream:
        """Open a blob now and return an async iterator over its bytes, for responses.

        Args:
            filename: The blob.
            start: The first byte to send (a ranged request's).
            end: The byte after the last to send (None: the end of the blob).

        Opening now means a blob deleted meanwhile is still served whole. See
        :class:`BlobStream` for how it is read and when it is closed.
        """
        return BlobStream(open(self.path(filename), "rb"), start, end)

    def delete(self, filenames: Iterable[str]) -> None:
        """Delete blobs (missing ones are ignored)."""
        for name in filenames:
            self.path(name).unlink(missing_ok=True)

    def sweep(self, referenced: set[str]) -> int:
        """Delete temporary files and blobs not in ``referenced``; return how many.

        Call only while nothing is being written (at start-up).
        """
        removed = 0
        for entry in self.directory.iterdir():
            if entry.name.startswith(_TMP_PREFIX) or (
                entry.name.endswith(_SUFFIX) and entry.name not in referenced
            ):
                entry.unlink(missing_ok=True)
                removed += 1
        return removed


def open_blob_store(
    url: str | None, data_dir: Path, *, endpoint_url: str | None = None
) -> BlobStore:
    """The blob store a server keeps its payloads in.

    Args:
        url: None (or empty) for the local directory ``<data_dir>/blobs``, the embedded
            default; ``s3://bucket`` or ``s3://bucket/prefix`` for S3-compatible object
            storage, with credentials, region and options from the usual AWS environment
            variables and config files (``AWS_ACCESS_KEY_ID``, ``AWS_PROFILE``, ...).
        data_dir: The server's data directory; an object store keeps only scratch files
            there (blobs being written or read, see :class:`~.object_store.S3BlobStore`).
        endpoint_url: The object store's URL, for an S3-compatible store other than AWS
            (MinIO, Ceph RGW, Cloudflare R2, ...); None: boto3's own choice (AWS, or
            ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` when set).

    Raises:
        ValueError: ``url`` is not one of the above.
        OSError: the bucket cannot be reached (:class:`~.object_store.ObjectStoreError`
            says why: credentials, a missing bucket, the endpoint).
    """
    if not url:
        return BlobStore(data_dir)
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(
            f"expected blobs at s3://bucket or s3://bucket/prefix (or none, for the "
            f"directory {data_dir / 'blobs'}), got {url!r}"
        )
    from .object_store import S3BlobStore  # here: boto3 is imported only to be used

    return S3BlobStore.connect(
        parts.netloc, parts.path.strip("/"), data_dir, endpoint_url=endpoint_url
    )


class BlobStream:
    """The bytes of an open blob file, as :data:`CHUNK` views of a read-only map of it.

    Nothing is copied or allocated per chunk: a socket's send copies straight from the
    page cache. Before the chunks of each :data:`READ_BLOCK` are handed out, a worker
    thread reads that block into the page cache (:func:`_warm`), so the event loop does
    not wait on the disk when it sends them (unless the kernel evicts them in between).
    Chunks of 1 MiB: large enough that serving runs near the loopback ceiling
    (Starlette's FileResponse reads 64 KiB at a time), small enough that the server's
    socket writes stay short.

    The file and the map are closed when the chunks run out or :meth:`aclose` is
    called, whether iterating began or not. The chunks are never released here: a
    transport may keep a view itself, not a copy, until it has sent it (uvloop's does,
    asyncio's from Python 3.12), so a chunk still referenced keeps the map (and its
    descriptor) until it is dropped. A blob is never written once committed, so a view
    handed out never changes.
    """

    def __init__(self, file: BinaryIO, start: int = 0, end: int | None = None) -> None:
        self._file = file
        # Not a method: no cycle keeps an unclosed one alive.
        self._chunks = _chunks(file, start, end)

    def __aiter__(self) -> BlobStream:
        return self

    async def __anext__(self) -> memoryview:
        return await anext(self._chunks)

    async def aclose(self) -> None:
        """Close the file and the map (see the class); the chunks stop."""
        await self._chunks.aclose()
        self._file.close()


async def _chunks(file: BinaryIO, start: int, stop: int | None) -> AsyncGenerator[memoryview, None]:
    """The chunks of :class:`BlobStream`; closes the file and the map when they end."""
    with file:
        size = os.fstat(file.fileno()).st_size
        stop = size if stop is None else min(stop, size)
        if start >= stop:
            return
        mapped = mmap.mmap(file.fileno(), size, access=mmap.ACCESS_READ)
        try:
            for block in range(start, stop, READ_BLOCK):
                end = min(block + READ_BLOCK, stop)
                await anyio.to_thread.run_sync(_warm, file.fileno(), block, end - block)
                for start in range(block, end, CHUNK):
                    yield memoryview(mapped)[start : min(start + CHUNK, end)]
        finally:
            # A chunk still referenced (BufferError) keeps the map: it goes with the last one.
            with contextlib.suppress(BufferError):
                mapped.close()


def _warm(fd: int, offset: int, length: int) -> None:
    """Read ``length`` bytes of a file at ``offset`` into the page cache; wait for them.

    ``sendfile`` to ``/dev/null`` reads the pages without copying them anywhere (17 ms
    per cached GiB here, a ``pread`` 90 ms); where the system refuses it, they are read
    into a small scratch buffer.
    """
    end = offset + length
    try:
        with open(os.devnull, "wb") as sink:
            while offset < end and (sent := os.sendfile(sink.fileno(), fd, offset, end - offset)):
                offset += sent
        return
    except OSError:
        pass
    buffer = bytearray(min(end - offset, CHUNK))
    while offset < end and (got := os.preadv(fd, [buffer], offset)):
        offset += got


def _map(path: Path) -> Any:
    with open(path, "rb") as file:
        if os.fstat(file.fileno()).st_size == 0:
            return b""
        return mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
