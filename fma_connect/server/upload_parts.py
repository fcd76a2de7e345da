"""The bytes of open resumable uploads, as the blob store keeps them: :class:`UploadParts`.

An upload's chunks arrive in any order, perhaps more than once, perhaps at different
servers; its completion turns them into one blob. What :class:`~.uploads.Uploads` (the
bookkeeping, in the database) and :class:`~.chunk_writes.ChunkWriters` (who writes a
chunk now) ask of the bytes is this class's interface:

- :meth:`~UploadParts.create` when an upload opens, and :meth:`~UploadParts.put` for the
  chunks the server holds already (copied from earlier blobs);
- :meth:`~UploadParts.target`: the local file a chunk PUT writes its bytes into, at the
  chunk's offset, as they arrive; then :meth:`~UploadParts.publish` once the chunk came
  whole and its digest matched, before it is recorded;
- :meth:`~UploadParts.assemble`: the upload as a :class:`~.blobs.BlobWriter`, to be
  checked and committed (or discarded) as a single-request update is;
- :meth:`~UploadParts.discard` when it is completed, abandoned or expires, and
  :meth:`~UploadParts.sweep` at start-up.

This module's class is the local directory's: one sparse file per upload
(``<data_dir>/uploads/<id>.part``), written in place, synced in the background, adopted
as the blob at completion (a rename: no byte is copied). The object store's
(:class:`~.object_store_uploads.S3UploadParts`) publishes each chunk as an object, so
that any replica may receive any chunk and any replica may complete the upload.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .file_writes import write_all

if TYPE_CHECKING:
    from .blobs import BlobStore, BlobWriter

__all__ = ["UploadParts"]

_SUFFIX = ".part"


class UploadParts:
    """The bytes of open uploads: one file per upload in a local directory.

    Args:
        blobs: The blob store completed uploads become blobs of.
        directory: Where the upload files live (created if missing).
    """

    #: Whether a published chunk survives a crash of this machine. A local file's
    #: chunks may be lost with the page cache (they are acknowledged before the file is
    #: synced), so a completion reads back the chunks an earlier run of the server
    #: received; an object store's are durable once published.
    durable = False

    def __init__(self, blobs: BlobStore, directory: Path) -> None:
        self.blobs = blobs
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)

    def path(self, upload_id: str) -> Path:
        """The local file of an upload (``upload_id`` is checked by the caller)."""
        return self.directory / f"{upload_id}{_SUFFIX}"

    def create(self, upload_id: str, size: int) -> None:
        """Start the bytes of a new upload of ``size`` bytes."""
        with open(self.path(upload_id), "xb") as file:
            file.truncate(size)  # holes until written: no disk used yet

    def target(self, upload_id: str) -> Path:
        """The file a chunk PUT writes into, at the chunk's offset in the upload.

        Here the upload's own file: a chunk written is in place.
        """
        return self.path(upload_id)

    def put(self, upload_id: str, index: int, offset: int, data: bytes) -> None:
        """Store chunk ``index`` (at ``offset``) from bytes the server already had."""
        fd = os.open(self.path(upload_id), os.O_WRONLY)
        try:
            write_all(fd, data, offset)
        finally:
            os.close(fd)

    def publish(
        self, upload_id: str, index: int, offset: int, length: int, holds: Callable[[], bool]
    ) -> bool:
        """Make chunk ``index``, just written whole into :meth:`target`, the upload's.

        Args:
            upload_id: The upload.
            index: The chunk.
            offset: Where it starts in the upload.
            length: Its length.
            holds: Whether the request that wrote it still holds the chunk (no newer
                request took it over and wrote over it since).

        Returns:
            Whether it was published. False when ``holds`` says a newer request took
            the chunk over meanwhile: that request publishes its own bytes.

        Here there is nothing to do: the chunk is in the upload's file already.
        """
        return True

    def release(self, upload_id: str, offset: int, length: int) -> None:
        """Free the local bytes of a published chunk that no request is writing.

        Here they are the upload's own, kept until it is completed.
        """

    def sync(self, upload_id: str) -> None:
        """Sync what was written of an upload's file (best effort: the commit's sync is
        the one that counts)."""
        try:
            fd = os.open(self.path(upload_id), os.O_WRONLY)
        except OSError:
            return  # completed or deleted meanwhile
        try:
            os.fdatasync(fd)
        except OSError:
            pass  # reported, if it lasts, by the commit's own sync
        finally:
            os.close(fd)

    def assemble(self, upload_id: str, size: int, chunk_size: int) -> BlobWriter:
        """The upload's bytes as a blob to check and commit (or discard).

        Here the file is moved in as it is. Call only once no chunk can be written.
        """
        return self.blobs.adopt(self.path(upload_id))

    def discard(self, upload_id: str) -> None:
        """Delete what is left of an upload's bytes (none is an error)."""
        self.path(upload_id).unlink(missing_ok=True)

    def sweep(self, owned: set[str]) -> int:
        """Delete the bytes of uploads not in ``owned`` (left by a crash, or a deleted
        model); return how many went. Call only at start-up."""
        gone = 0
        for entry in self.directory.iterdir():
            if entry.name.removesuffix(_SUFFIX) not in owned:
                entry.unlink(missing_ok=True)
                gone += 1
        return gone
