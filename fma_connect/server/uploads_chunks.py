"""An upload's chunks (a part of :class:`~.uploads.Uploads`): where one goes, and its record.

A request that PUTs a chunk asks where it goes (:meth:`UploadChunks.chunk_target`),
writes it under a claim (:mod:`.chunk_writes`), then ends the claim, recording the
chunk or forgetting it (:meth:`UploadChunks.done`).
"""

from __future__ import annotations

import time
from pathlib import Path

from .errors import detail, not_found
from .uploads_core import _TOUCH, UploadsCore

__all__ = ["UploadChunks"]


class UploadChunks(UploadsCore):
    """An upload's chunks (a part of :class:`~.uploads.Uploads`)."""

    # -- chunks ------------------------------------------------------------------------

    def chunk_target(self, client: str, upload_id: str, index: int) -> tuple[int, int, str, Path]:
        """Where chunk ``index`` of an open upload goes: ``(offset, length, digest, path)``.

        Raises:
            HTTPError: 404 (no such upload, or no such chunk), 409 (completed already).
        """
        row = self.row(client, upload_id)
        if row["update_id"] is not None:
            raise detail(409, f"Upload {upload_id} is complete (update {row['update_id']}).")
        if (row["completing_until"] or 0) > time.time():  # by another replica (see complete)
            raise detail(409, f"Upload {upload_id} is being completed.")
        manifest = self._manifest(row)
        if not 0 <= index < len(manifest.digests):
            raise not_found(
                f"Upload {upload_id} has chunks 0 to {len(manifest.digests) - 1}, not {index}."
            )
        offset, length = manifest.span(index)
        return offset, length, manifest.digests[index], self.parts.target(upload_id)

    def done(self, upload_id: str, index: int, claim: object, nbytes: int, whole: bool) -> None:
        """End a claim (:class:`~.chunk_writes.ChunkWriters`) after ``nbytes`` of the
        chunk were written: record the chunk if it came ``whole`` (every byte, its digest
        matched), else forget it (its bytes may be overwritten in part); nothing, if a
        newer request took the claim over."""
        if not self.writers.holds(claim, upload_id, index):
            return
        if whole and not self.writers.publish(claim, upload_id, index):
            return  # taken over while it was published: the newer request records it
        # Not waiting for the disk: a record lost in a crash of the machine is a chunk
        # the completion finds missing and the client sends again (the local bytes are
        # not synced when acknowledged either; see UploadParts.durable).
        with self.store.transaction(durable=False) as conn:
            if whole:  # unless the upload went meanwhile (abandoned, superseded)
                conn.execute(
                    "INSERT INTO upload_chunks (upload, idx, boot) "
                    "SELECT ?, ?, ? WHERE EXISTS (SELECT 1 FROM uploads WHERE id = ?) "
                    "ON CONFLICT (upload, idx) DO UPDATE SET boot = excluded.boot",
                    (upload_id, index, self.boot, upload_id),
                )
                conn.execute(  # and the upload lives on from now (see expiry)
                    _TOUCH,
                    (time.time() + self.expiry, upload_id),
                )
            elif self.store.db.shared:  # not a newer request's record on another replica
                conn.execute(  # (completion checks every chunk there, see _damaged)
                    "DELETE FROM upload_chunks WHERE upload = ? AND idx = ? AND boot = ?",
                    (upload_id, index, self.boot),
                )
            else:
                conn.execute(
                    "DELETE FROM upload_chunks WHERE upload = ? AND idx = ?", (upload_id, index)
                )
        self.writers.release(claim, upload_id, index, nbytes)
