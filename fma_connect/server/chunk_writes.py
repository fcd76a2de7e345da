"""Who writes which chunk of a resumable upload now, and the upload files' syncs.

A chunk's bytes are written by one request at a time: :meth:`ChunkWriters.claim` gives
a request the chunk, and a newer request for the same chunk (a client resending after a
connection it thinks broken, while the server still reads the old one) takes it over.
:meth:`ChunkWriters.write` checks the claim and writes under one lock, which a
completion takes too (:meth:`ChunkWriters.stop`): once it holds it, no byte of any
request lands in the upload's file.

The bytes go where the blob store's :class:`~.upload_parts.UploadParts` says: a chunk is
written into its local :meth:`~.upload_parts.UploadParts.target` file and, once whole,
:meth:`ChunkWriters.publish`-ed (a no-op for the local directory, an object PUT for an
object store).
"""

from __future__ import annotations

import threading
from typing import Any

from .blobs import SYNC_EVERY
from .errors import HTTPError, detail
from .file_writes import write_all
from .upload_parts import UploadParts

__all__ = ["ChunkWriters"]


class ChunkWriters:
    """The claims on chunks being written, and the background syncs of upload files.

    Args:
        parts: Where the uploads' bytes go.
    """

    def __init__(self, parts: UploadParts) -> None:
        self._parts = parts
        self._writing: dict[tuple[str, int], object] = {}  # chunk -> the claim writing it
        #: chunk -> (the claim, the first and the end offset it wrote): what it publishes
        self._spans: dict[tuple[str, int], tuple[object, int, int]] = {}
        self._stopped: set[str] = set()  # uploads being completed
        self._unsynced: dict[str, int] = {}  # bytes written since an upload's last sync
        self._syncing: dict[str, threading.Thread] = {}
        self._guard = threading.Lock()

    def claim(self, upload_id: str, index: int) -> object:
        """Claim chunk ``index`` for one request's bytes (taking it from an older one).

        Raises:
            HTTPError: 409 while the upload is being completed.
        """
        claim = object()
        with self._guard:
            if upload_id in self._stopped:
                raise detail(409, f"Upload {upload_id} is being completed.")
            self._writing[(upload_id, index)] = claim
        return claim

    def write(self, claim: object, upload_id: str, index: int, fd: int, data: Any, at: int) -> bool:
        """Write ``data`` at offset ``at`` of the upload's file if ``claim`` still holds
        the chunk; return whether it did."""
        key = (upload_id, index)
        with self._guard:
            if self._writing.get(key) is not claim:
                return False
            end = write_all(fd, data, at)
            span = self._spans.get(key)
            if span is None or span[0] is not claim:
                self._spans[key] = (claim, at, end)
            else:
                self._spans[key] = (claim, min(span[1], at), max(span[2], end))
            return True

    def publish(self, claim: object, upload_id: str, index: int) -> bool:
        """Publish the chunk ``claim`` wrote whole (see
        :meth:`~.upload_parts.UploadParts.publish`); return whether it did (False: a
        newer request took the chunk over, and publishes its own bytes).

        Call from a worker thread, before the chunk is recorded: an object store's
        publish is a PUT of the chunk.

        Raises:
            HTTPError: 503 when the store did not take the chunk (the client sends it
                again, as it does any chunk answered 503).
        """
        key = (upload_id, index)
        with self._guard:
            span = self._spans.get(key)
            if self._writing.get(key) is not claim or span is None or span[0] is not claim:
                return False
        _, start, end = span
        try:
            published = self._parts.publish(
                upload_id, index, start, end - start, lambda: self.holds(claim, upload_id, index)
            )
        except OSError as exc:
            told = f"Chunk {index} of upload {upload_id} was not stored ({exc}); send it again."
            raise HTTPError(503, {"detail": told}, {"Retry-After": "1"}) from exc
        if not published:
            return False
        with self._guard:
            # A request that takes the chunk over writes under this lock, so the local
            # bytes are freed only while none can be writing them.
            if self._writing.get(key) is claim:
                self._parts.release(upload_id, start, end - start)
        return True

    def holds(self, claim: object, upload_id: str, index: int) -> bool:
        """Whether ``claim`` still holds chunk ``index``."""
        with self._guard:
            return self._writing.get((upload_id, index)) is claim

    def release(self, claim: object, upload_id: str, index: int, nbytes: int) -> None:
        """End ``claim`` after it wrote ``nbytes``; sync the file in the background every
        :data:`~.blobs.SYNC_EVERY` bytes, so the disk writes while the next chunks
        arrive (best effort: the commit's sync is the one that counts)."""
        with self._guard:
            if self._writing.get((upload_id, index)) is claim:
                del self._writing[(upload_id, index)]
            span = self._spans.get((upload_id, index))
            if span is not None and span[0] is claim:
                del self._spans[(upload_id, index)]
            self._unsynced[upload_id] = self._unsynced.get(upload_id, 0) + nbytes
            running = self._syncing.get(upload_id)
            if self._unsynced[upload_id] < SYNC_EVERY or (running and running.is_alive()):
                return
            self._unsynced[upload_id] = 0
            thread = threading.Thread(
                target=self._sync, args=(upload_id,), name="fma-upload-sync", daemon=True
            )
            self._syncing[upload_id] = thread
            thread.start()

    def stop(self, upload_id: str) -> set[int]:
        """Stop every write into an upload (for its completion); return the chunks that
        were being written. Ends with :meth:`resume`."""
        with self._guard:
            self._stopped.add(upload_id)
            interrupted = {i for (u, i) in self._writing if u == upload_id}
            for index in interrupted:
                del self._writing[(upload_id, index)]
            for key in [key for key in self._spans if key[0] == upload_id]:
                del self._spans[key]
            syncing = self._syncing.pop(upload_id, None)
            self._unsynced.pop(upload_id, None)
        if syncing is not None:
            syncing.join()  # it holds the file open
        return interrupted

    def resume(self, upload_id: str) -> None:
        """Let chunks of the upload be written again (its completion ended)."""
        with self._guard:
            self._stopped.discard(upload_id)

    def _sync(self, upload_id: str) -> None:
        self._parts.sync(upload_id)
