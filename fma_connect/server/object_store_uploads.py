"""Resumable uploads over an object store, shared by every replica: :class:`S3UploadParts`.

A chunk PUT may reach any replica, and the completion any other. So a chunk, once it
came whole and its digest matched, is published as an object of its own,
``<prefix>/uploads/<upload id>/<index>``, before the database records it; a recorded
chunk is therefore always in the store, whole (a PUT is atomic), and never needs to be
read back as a local file's chunks do after a crash (:attr:`S3UploadParts.durable`).

On the replica that receives it, a chunk's bytes are first written where the local
directory writes them, into a sparse file of the upload (in this store's own scratch,
``<data_dir>/blob-spool/<store>/uploads/<id>.part``), so the chunk route and its claims
work exactly as they do locally. Publishing copies the chunk's span of that file into
an unnamed scratch file (a kernel copy), checks that the request still holds the chunk
(no newer request for the same chunk wrote over it meanwhile), and PUTs the copy; the
span of the sparse file is then freed (a punched hole), so a replica's disk holds only
the chunks in flight; the file itself goes once no chunk of the upload came to this
replica for the store's sweep grace (an hour).

Completing downloads the chunks into the new blob's spool file, where the update is
decoded and checked as any update is; the blob is then made by the store copying the
chunk objects into one (multipart UploadPartCopy, no byte through the server) where
every chunk but the last is at least S3's 5 MiB least part, else by uploading the spool.
The chunk objects are deleted when the upload is completed, abandoned or expires; those
of uploads no database row owns (a crash's, a deleted model's) by the start-up sweep.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

from .blobs import CHUNK, BlobWriter
from .errors import HTTPError, detail
from .file_writes import write_all
from .object_store import MIN_PART_SIZE, S3BlobStore, S3BlobWriter
from .upload_parts import UploadParts

__all__ = ["S3UploadParts"]

log = logging.getLogger(__name__)

#: Seconds between two looks for idle upload files (see S3UploadParts._retire_idle).
_RETIRE_EVERY = 60.0


class S3UploadParts(UploadParts):
    """The chunks of open uploads as objects (see the module notes).

    Args:
        blobs: The object store.
        directory: This replica's sparse files of the chunks being received.
    """

    durable = True

    def __init__(self, blobs: S3BlobStore, directory: Path) -> None:
        super().__init__(blobs, directory)
        self.store = blobs
        self._scanned = time.monotonic()

    def key(self, upload_id: str, index: int) -> str:
        """The object key of chunk ``index`` of an upload."""
        return f"{self.store.prefix}uploads/{upload_id}/{index:05d}"

    def create(self, upload_id: str, size: int) -> None:
        """Nothing to do: chunks appear as they are published."""

    def target(self, upload_id: str) -> Path:
        """This replica's sparse file of the upload, made if missing (any replica may be
        sent any chunk), and marked as in use now (see :meth:`_retire_idle`)."""
        path = self.path(upload_id)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        os.utime(path)
        self._retire_idle(path)
        return path

    def _retire_idle(self, keep: Path) -> None:
        """Delete, once a minute at most, this replica's files of uploads it has not been
        sent a chunk of for the store's sweep grace: their chunks are published (and
        punched out), and the upload was completed or abandoned elsewhere, or is idle."""
        now = time.monotonic()
        if now - self._scanned < _RETIRE_EVERY:
            return
        self._scanned = now
        for entry in self.directory.iterdir():
            if entry == keep:
                continue
            with contextlib.suppress(FileNotFoundError):
                if time.time() - entry.stat().st_mtime >= self.store.sweep_grace:
                    entry.unlink()

    def put(self, upload_id: str, index: int, offset: int, data: bytes) -> None:
        """Publish chunk ``index`` from bytes the server already had."""
        fd = self.store.scratch()
        try:
            write_all(fd, data, 0)
            self.store.put_file(fd, len(data), self.key(upload_id, index))
        finally:
            os.close(fd)

    def publish(
        self, upload_id: str, index: int, offset: int, length: int, holds: Callable[[], bool]
    ) -> bool:
        """PUT chunk ``index`` from this replica's file, if the request still holds it."""
        try:
            source = os.open(self.path(upload_id), os.O_RDONLY)
        except FileNotFoundError:
            return False  # the upload went meanwhile (completed, abandoned, superseded)
        try:
            copy = self.store.scratch()
            try:
                if _copy_span(source, copy, offset, length) != length or not holds():
                    return False
                self.store.put_file(copy, length, self.key(upload_id, index))
            finally:
                os.close(copy)
        finally:
            os.close(source)
        return True

    def release(self, upload_id: str, offset: int, length: int) -> None:
        """Punch the published chunk out of this replica's file (best effort)."""
        try:
            fd = os.open(self.path(upload_id), os.O_WRONLY)
        except OSError:
            return
        try:
            _punch_hole(fd, offset, length)
        finally:
            os.close(fd)

    def sync(self, upload_id: str) -> None:
        """Nothing to do: the published chunks are durable, the local file is scratch."""

    def assemble(self, upload_id: str, size: int, chunk_size: int) -> BlobWriter:
        """Download the chunks into a new blob's spool (see the module notes).

        Raises:
            HTTPError: 409 with the ``missing`` chunks whose objects are gone (they are
                recorded, but their objects were deleted: PUT them again); 503 when the
                store fails (completing again later completes it).
        """
        count = math.ceil(size / chunk_size)
        keys = [self.key(upload_id, index) for index in range(count)]
        writer = S3BlobWriter(self.store)
        try:
            fd = os.open(writer.temp_path, os.O_WRONLY)
            try:
                os.ftruncate(fd, size)

                def fetch(index: int) -> int | None:
                    at = index * chunk_size
                    try:
                        self.store.download(keys[index], fd, 0, min(chunk_size, size - at), at)
                    except FileNotFoundError:
                        return index
                    return None

                missing = [i for i in self.store.each(fetch, range(count)) if i is not None]
            except OSError as exc:
                told = f"Upload {upload_id} cannot be read back now ({exc}); complete it again."
                raise HTTPError(503, {"detail": told}, {"Retry-After": "5"}) from exc
            finally:
                os.close(fd)
            if missing:
                raise detail(
                    409,
                    f"Upload {upload_id}: the object store no longer holds {len(missing)} of "
                    f"its {count} chunks: PUT them again, then complete it again.",
                    missing=missing,
                )
            writer.nbytes = size
            if count == 1 or chunk_size >= MIN_PART_SIZE:
                writer.assembled_from(keys)
        except BaseException:
            writer.discard()
            raise
        return writer

    def discard(self, upload_id: str) -> None:
        """Delete this replica's file of the upload and the upload's chunk objects (best
        effort: what a failed request leaves is swept at a start-up)."""
        self.path(upload_id).unlink(missing_ok=True)
        try:
            keys = [key for key, _ in self.store.listing(f"uploads/{upload_id}/")]
        except OSError as exc:
            log.warning("%s; swept at the next start", exc)
            return
        self.store.delete_keys(keys)

    def sweep(self, owned: set[str]) -> int:
        """Delete the chunk objects of uploads not in ``owned`` older than the store's
        sweep grace (another replica may be opening one now), and the scratch of stores
        that left; return how many uploads and scratch directories went. Safe while
        other replicas run; call it at start-up."""
        gone = self.store.sweep_scratch()
        stale: dict[str, list[str]] = {}
        for key, age in self.store.listing("uploads/"):
            upload_id = key.rsplit("/", 2)[-2]
            if upload_id not in owned and age >= self.store.sweep_grace:
                stale.setdefault(upload_id, []).append(key)
        self.store.delete_keys([key for keys in stale.values() for key in keys])
        return gone + len(stale)


def _copy_span(source: int, target: int, offset: int, length: int) -> int:
    """Copy ``length`` bytes of ``source`` from ``offset`` to the start of ``target``; return
    how many there were (the kernel copies them, where it can)."""
    done = 0
    while done < length:
        try:
            copied = os.copy_file_range(source, target, length - done, offset + done, done)
        except OSError as exc:
            if exc.errno not in {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP}:
                raise
            data = os.pread(source, min(CHUNK, length - done), offset + done)
            copied = os.pwrite(target, data, done) if data else 0
        if not copied:
            break
        done += copied
    return done


_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_fallocate = getattr(_libc, "fallocate", None)
if _fallocate is not None:
    _fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    _fallocate.restype = ctypes.c_int


def _punch_hole(fd: int, offset: int, length: int) -> bool:
    """Free the disk blocks of a span of a file (Linux); return whether it did."""
    if _fallocate is None:
        return False
    flags = _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE
    return bool(_fallocate(fd, flags, offset, length) == 0)
