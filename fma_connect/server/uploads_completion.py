"""Completing uploads (a part of :class:`~.uploads.Uploads`): checked chunks become an update.

One server completes an upload at a time (replicas sharing the database claim it).
Every chunk must be there, and those received by an earlier run of the server, or being
written when the completion began, are checked against their digests again; the payload
is then stored as an update, and its chunks indexed for later uploads of the model.
"""

from __future__ import annotations

import mmap
import time
from collections.abc import Callable
from typing import Any

import blake3

from .blobs import BlobWriter
from .errors import HTTPError, detail
from .manifests import Manifest
from .store_core import Row
from .uploads_core import UploadsCore

__all__ = ["AddUpdate", "UploadCompletion"]

#: Seconds a server's claim to complete an upload lasts (a replica that died completing
#: it leaves the upload to a later completion once it passed).
_COMPLETION_CLAIM = 600.0
#: Most seconds a completion waits for another replica's completion of the same upload.
_COMPLETION_WAIT = 120.0
#: Bytes hashed per read when a chunk is checked against its digest.
_VERIFY_SLICE = 8 << 20

#: What the HTTP routes hand to :meth:`Uploads.complete` to store a finished payload:
#: ``(fields, codec name, blob writer, idempotency key) -> (update row, created)``.
AddUpdate = Callable[[dict[str, Any], str, BlobWriter, str | None], tuple[Row, bool]]


class UploadCompletion(UploadsCore):
    """Completing uploads (a part of :class:`~.uploads.Uploads`)."""

    # -- completing --------------------------------------------------------------------

    def complete(self, client: str, upload_id: str, add: AddUpdate) -> tuple[Row, bool]:
        """Check every chunk, then store the payload as an update through ``add``.

        Returns:
            The update row and whether it is new (False: completed before).

        Raises:
            HTTPError: 409 with the chunks still missing (or found damaged), any error
                of ``add`` (the upload is then deleted: its bytes are final).
        """
        with self._locks.hold(upload_id):
            deadline = time.monotonic() + _COMPLETION_WAIT
            pause = 0.02
            while True:
                row = self.row(client, upload_id)
                stored = self.store.update_by_key(client, row["idempotency_key"])
                if stored is None and row["update_id"] is not None:  # stored under the
                    stored = self.store.get_update(row["update_id"])  # signed update's key
                if stored is not None:  # completed before (perhaps cut off before the answer)
                    return stored, False
                if self._claim_completion(upload_id):
                    break
                if time.monotonic() > deadline:  # another replica completes it, slowly
                    raise detail(409, f"Upload {upload_id} is being completed; ask again.")
                time.sleep(pause)
                pause = min(2 * pause, 0.5)
            manifest = self._manifest(row)
            interrupted = self.writers.stop(upload_id)  # from here on no chunk is written
            try:
                return self._complete(upload_id, row, manifest, interrupted, add)
            finally:
                self.writers.resume(upload_id)
                self._end_completion(upload_id)

    def _claim_completion(self, upload_id: str) -> bool:
        """Claim the completion of an open upload for this server: replicas sharing the
        database complete an upload once (the others wait, then answer its update), and
        take no chunk of it meanwhile (:meth:`chunk_target`)."""
        now = time.time()
        with self.store.transaction() as conn:
            cursor = conn.execute(
                "UPDATE uploads SET completing_until = ? WHERE id = ? AND update_id IS NULL "
                "AND (completing_until IS NULL OR completing_until < ?)",
                (now + _COMPLETION_CLAIM, upload_id, now),
            )
            return cursor.rowcount > 0

    def _end_completion(self, upload_id: str) -> None:
        with self.store.transaction() as conn:
            conn.execute("UPDATE uploads SET completing_until = NULL WHERE id = ?", (upload_id,))

    def _complete(
        self, upload_id: str, row: Row, manifest: Manifest, interrupted: set[int], add: AddUpdate
    ) -> tuple[Row, bool]:
        """:meth:`complete`, once no chunk can be written; ``interrupted``: the chunks a
        request was writing (their bytes on disk are checked again)."""
        missing = self.missing(row)
        if not missing:
            missing = self._damaged(upload_id, manifest, interrupted)
        if missing:
            raise detail(
                409,
                f"Upload {upload_id} lacks {len(missing)} of its {len(manifest.digests)} "
                "chunks: PUT them, then complete it again.",
                missing=missing,
            )
        writer = self.parts.assemble(upload_id, manifest.size, manifest.chunk_size)
        try:
            key = row["idempotency_key"]
            update, created = add(manifest.fields, manifest.codec, writer, key)
        except HTTPError:
            writer.discard()
            self._delete(upload_id)
            raise
        finally:
            writer.discard()  # no-op once committed
        self._finish(upload_id, update, manifest)
        return update, created

    def _damaged(self, upload_id: str, manifest: Manifest, interrupted: set[int]) -> list[int]:
        """The chunks whose bytes on disk no longer match their digests, of those received
        by an earlier run of the server or being rewritten when the completion began
        (forgotten here, to be sent again).

        With a shared database every chunk is checked (BLAKE3 reads ~4 GB/s): a request
        on another replica that this one's claims cannot stop may have written into the
        file after its chunk was recorded.
        """
        everything = self.store.db.shared
        earlier = [
            row["idx"]
            for row in self.store.all(
                "SELECT idx FROM upload_chunks WHERE upload = ? AND (boot IS NULL OR boot <> ?)",
                (upload_id, "" if everything else self.boot),
            )
        ]
        earlier = sorted(set(earlier) | interrupted)
        if not earlier or self.parts.durable:  # published chunks are whole and stay so
            return []
        damaged = []
        with open(self._path(upload_id), "rb") as file:
            view = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
            try:
                for index in earlier:
                    digest = manifest.digests[index]
                    offset, length = manifest.span(index)
                    hasher = blake3.blake3()
                    for start in range(offset, offset + length, _VERIFY_SLICE):
                        hasher.update(view[start : min(start + _VERIFY_SLICE, offset + length)])
                    if hasher.hexdigest() != digest:
                        damaged.append(index)
            finally:
                view.close()
        if damaged:
            with self.store.transaction() as conn:
                conn.executemany(
                    "DELETE FROM upload_chunks WHERE upload = ? AND idx = ?",
                    [(upload_id, index) for index in damaged],
                )
        return damaged

    def _finish(self, upload_id: str, update: Row, manifest: Manifest) -> None:
        """Mark the upload done and index the new blob's chunks for later uploads."""
        blob = self.store.one("SELECT blob FROM updates WHERE id = ?", (update["id"],))
        model_id = manifest.fields["federated_model"]
        with self.store.transaction() as conn:
            conn.execute(
                "UPDATE uploads SET update_id = ?, expires = ? WHERE id = ?",
                (update["id"], time.time() + self.expiry, upload_id),
            )
            conn.execute("DELETE FROM upload_chunks WHERE upload = ?", (upload_id,))
            if blob is not None:
                conn.executemany(
                    'INSERT INTO chunk_index (federated_model, digest, blob, "offset", length) '
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (federated_model, digest) DO UPDATE SET "
                    'blob = excluded.blob, "offset" = excluded."offset", length = excluded.length',
                    [
                        (model_id, digest, blob["blob"], *manifest.span(i))
                        for i, digest in enumerate(manifest.digests)
                    ],
                )
        self.parts.discard(upload_id)
