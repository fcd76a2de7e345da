"""Who writes which chunk of a resumable upload now, and the upload files' syncs.

A chunk's bytes are written by one request at a time: :meth:`ChunkWriters.claim` gives
a request the chunk, and a newer request for the same chunk (a client resending after a
connection it thinks broken, while the server still reads the old one) takes it over.
:meth:`ChunkWriters.write` checks the claim and writes under one lock, which a
completion takes too (:meth:`ChunkWriters.stop`): once it holds it, no byte of any
request lands in the upload's file.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .blobs import SYNC_EVERY
from .errors import detail

__all__ = ["ChunkWriters"]


class ChunkWriters:
    """The claims on chunks being written, and the background syncs of upload files.

    Args:
        path: The file of an upload (by id).
    """

    def __init__(self, path: Callable[[str], Path]) -> None:
        self._path = path
        self._writing: dict[tuple[str, int], object] = {}  # chunk -> the claim writing it
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
        with self._guard:
            if self._writing.get((upload_id, index)) is not claim:
                return False
            os.pwrite(fd, data, at)
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
        try:
            fd = os.open(self._path(upload_id), os.O_WRONLY)
        except OSError:
            return  # completed or deleted meanwhile
        try:
            os.fdatasync(fd)
        except OSError:
            pass  # reported, if it lasts, by the commit's own sync
        finally:
            os.close(fd)
