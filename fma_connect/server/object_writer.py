"""A blob being written to an object store: :class:`S3BlobWriter`.

The bytes are spooled to a local file as they arrive (the server decodes and checks an
update from it before it is stored, :meth:`~.blobs.BlobWriter.contents`), and go up to
the store as they arrive too: each time the spool passes another
:attr:`~.object_store.S3BlobStore.part_size` bytes, that part is queued for a multipart
upload, which worker threads send :attr:`~.object_store.S3BlobStore.concurrency` at a
time, reading each part from the spool just before sending it. :meth:`~S3BlobWriter.commit`
then sends only the tail and completes the upload: the object appears, whole, only
then. Memory: at most ``part_size * concurrency`` bytes of parts (64 MiB by default),
whatever the blob's size.

A blob smaller than a part is one PUT at the commit. A blob filled through its map (a
round's mean, :class:`~.in_place.InPlace`) or moved in whole (a finished resumable
upload) is uploaded at the commit, in parallel parts; an assembled resumable upload is
copied by the store from its chunks' objects where S3 allows it (see
:meth:`~S3BlobWriter.assembled_from`). A writer discarded before its commit aborts its
multipart upload (in the background, once the parts in flight are done), so no object
and no parts are left.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError

from .blobs import _SUFFIX, BlobWriter
from .object_errors import asking

if TYPE_CHECKING:
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

    from .object_store import S3BlobStore

__all__ = ["S3BlobWriter"]


class S3BlobWriter(BlobWriter):
    """A blob being written: spooled locally, streamed to a multipart upload (see the
    module notes).

    As the directory's writer, but not synced to local disk (the object store makes it
    durable); :meth:`map` and :meth:`contents` work on the spool file as they do on a
    blob file.
    """

    def __init__(self, store: S3BlobStore, written: Path | None = None) -> None:
        super().__init__(store.directory, written, sync=False)
        self._store = store
        self._sources: list[str] | None = None
        self._name = f"{secrets.token_hex(16)}{_SUFFIX}"
        self._stream: _PartStream | None = None

    def assembled_from(self, sources: list[str]) -> None:
        """Say the spool holds the concatenation of the objects ``sources`` (each but
        the last at least :data:`~.object_store.MIN_PART_SIZE` long), which
        :meth:`commit` then has the store copy instead of uploading the spool."""
        self._sources = sources

    def write(self, chunk: object) -> None:
        """Append a bytes-like chunk; queue each part it completes for upload."""
        super().write(chunk)
        part = self._store.part_size
        sent = 0 if self._stream is None else self._stream.queued
        if self.nbytes - sent * part < part or self._map is not None:
            return
        self._file.flush()  # the workers read the parts from the file
        if self._stream is None:
            self._stream = _PartStream(self._store, self._store.key(self._name), self.temp_path)
        while (self._stream.queued + 1) * part <= self.nbytes:
            self._stream.queue(self._stream.queued * part, part)

    def commit(self) -> str:
        """Finish the upload (or copy the sources) and return the blob's name; the object
        appears whole or not at all.

        Raises:
            ObjectStoreError: the store failed (no object is left; the spool is deleted
                by :meth:`discard`).
        """
        self._file.flush()
        self._join_sync()
        # A map's writes are in the page cache already, where the upload reads them.
        key = self._store.key(self._name)
        stream, self._stream = self._stream, None  # completed or aborted here, either way
        if stream is not None:
            done = stream.queued * self._store.part_size
            if self.nbytes > done:
                stream.queue(done, self.nbytes - done)
            stream.complete()
        elif self._sources is not None:
            self._store.copy_parts(self._sources, key)
        else:
            fd = os.open(self.temp_path, os.O_RDONLY)
            try:
                self._store.put_file(fd, self.nbytes, key)
            finally:
                os.close(fd)
        self._file.close()
        self.temp_path.unlink(missing_ok=True)
        self.filename = self._name
        return self._name

    def discard(self) -> None:
        """Delete the spool and abort the upload (no-op after :meth:`commit`)."""
        if self.filename is None and self._stream is not None:
            self._stream.abort()
            self._stream = None
        super().discard()


class _PartStream:
    """One multipart upload fed part by part from a growing file, by worker threads.

    Started by the first part queued; the store's ``create_multipart_upload`` runs in a
    worker too, so :meth:`queue` never waits on the network (it is called from the
    event loop as a request body arrives).
    """

    def __init__(self, store: S3BlobStore, key: str, path: Path) -> None:
        self._store, self._key = store, key
        self._fd = os.open(path, os.O_RDONLY)  # kept: the spool may be unlinked first
        self._closing = threading.Lock()
        self._pool = ThreadPoolExecutor(store.concurrency, "fma-s3-part")
        self._started: Future[str] = self._pool.submit(self._create)
        self._parts: list[Future[CompletedPartTypeDef]] = []
        #: Parts queued so far.
        self.queued = 0

    def _create(self) -> str:
        with asking(f"writing {self._key}"):
            answer = self._store.client.create_multipart_upload(
                Bucket=self._store.bucket, Key=self._key
            )
        return answer["UploadId"]

    def queue(self, offset: int, length: int) -> None:
        """Send the file's bytes ``[offset, offset + length)`` as the next part."""
        self.queued += 1
        self._parts.append(self._pool.submit(self._send, self.queued, offset, length))

    def _send(self, number: int, offset: int, length: int) -> CompletedPartTypeDef:
        upload_id = self._started.result()
        data = os.pread(self._fd, length, offset)  # read now: only parts in flight are held
        with asking(f"writing part {number} of {self._key}"):
            answer = self._store.client.upload_part(
                Bucket=self._store.bucket,
                Key=self._key,
                UploadId=upload_id,
                PartNumber=number,
                Body=data,
            )
        return {"ETag": answer["ETag"], "PartNumber": number}

    def complete(self) -> None:
        """Wait for every part and complete the upload (aborted if anything failed)."""
        try:
            upload_id = self._started.result()
            parts = [part.result() for part in self._parts]
            with asking(f"writing {self._key} in {len(parts)} parts"):
                self._store.client.complete_multipart_upload(
                    Bucket=self._store.bucket,
                    Key=self._key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                )
        except BaseException:
            self._finish(self._abort_now)
            raise
        self._finish(lambda: None)

    def abort(self) -> None:
        """Stop: cancel the parts not started, and abort the upload in the background
        once those in flight are done (nothing here waits on the network)."""
        for part in self._parts:
            part.cancel()
        threading.Thread(
            target=self._finish, args=(self._abort_now,), name="fma-s3-abort", daemon=True
        ).start()

    def _abort_now(self) -> None:
        with contextlib.suppress(Exception):  # no upload was started, or it is gone already
            upload_id = self._started.result()
            with contextlib.suppress(BotoCoreError, ClientError):
                self._store.client.abort_multipart_upload(
                    Bucket=self._store.bucket, Key=self._key, UploadId=upload_id
                )

    def _finish(self, then: Callable[[], None]) -> None:
        """Wait for the workers, run ``then``, close the file (once, however called)."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        with self._closing:
            if self._fd < 0:
                return
            try:
                then()
            finally:
                os.close(self._fd)
                self._fd = -1
