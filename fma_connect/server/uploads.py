"""Resumable, content-addressed uploads of large binary updates (docs/UPLOADS.md).

A client announces an update as a *manifest*: its update fields, codec, size, chunk
size and the BLAKE3 digest of every chunk. The server answers with an upload id and the
chunks it still needs: chunks whose digest it already holds for the model (from an
earlier update that came this way) are copied from that update's blob, so an update
that leaves most layers unchanged costs only its changed chunks. The client then PUTs
each missing chunk, in any order, as often as it takes, and completes the upload; only
then is the update decoded, checked, stored and counted, exactly as a single-request
update is. A partial upload is never visible to anything but its own routes.

Files: an upload's bytes are written in place into ``<data_dir>/uploads/<id>.part``
(as long as the payload, holes until written); one request at a time writes a chunk
(a newer one takes over from an older). A chunk is acknowledged once written and its
digest checked, not synced: the file is synced in the background as it grows (every
:data:`~.blobs.SYNC_EVERY` bytes, as a blob being written is), and for good when it is
committed. A chunk that arrived before the server last started may have been lost with
the machine's page cache, so completing re-reads those chunks and checks their digests
again, and asks for any that no longer match.

Upkeep: an upload expires :attr:`Uploads.expiry` seconds after its last chunk or its
creation (24 h by default) and is then refused and deleted. The declared sizes of a
client's open uploads count against :attr:`Uploads.quota`; a manifest that would pass
it supersedes the same client's older uploads for the same model (a restarted client
that trained again), and is refused if that is not enough.

:class:`Uploads` is the one entry point; its parts hold the code: :mod:`.uploads_core`
(its state, an upload's row, manifest and missing chunks, deletion and expiry),
:mod:`.uploads_opening` (opening), :mod:`.uploads_chunks` (where a chunk goes, and its
record) and :mod:`.uploads_completion` (completing). Listing and upkeep are here.
"""

from __future__ import annotations

from typing import Any

from .uploads_chunks import UploadChunks
from .uploads_completion import UploadCompletion
from .uploads_opening import UploadOpening

__all__ = ["DEFAULT_EXPIRY", "DEFAULT_UPLOAD_QUOTA", "Uploads"]

#: Seconds an upload lives after its last activity.
DEFAULT_EXPIRY = 24 * 3600
#: Most bytes one client's open uploads may declare in all (two of the largest updates).
DEFAULT_UPLOAD_QUOTA = 32 << 30


class Uploads(UploadOpening, UploadChunks, UploadCompletion):
    """The open uploads of a server, their files and the index of known chunks.

    Args:
        store: The server's database (the ``uploads``, ``upload_chunks`` and
            ``chunk_index`` tables).
        blobs: Its blob store (finished uploads become blobs; known chunks are read
            from blobs).
        data_dir: Where ``uploads/`` lives.
        expiry: Seconds an upload lives after its last activity.
        quota: Most bytes a client's open uploads may declare in all.
    """

    # -- listing -----------------------------------------------------------------------

    def listing(self, client: str) -> list[dict[str, Any]]:
        """The client's open uploads."""
        self.expire()
        rows = self.store.all(
            "SELECT id FROM uploads WHERE client = ? AND update_id IS NULL ORDER BY expires",
            (client,),
        )
        return [self.describe(client, row["id"]) for row in rows]

    # -- upkeep ------------------------------------------------------------------------

    def abandon(self, client: str, upload_id: str) -> None:
        """Delete an upload of ``client`` (open or complete) and its file."""
        self.row(client, upload_id)
        self._delete(upload_id)

    def abandon_model(self, model_id: int) -> None:
        """Delete every upload of a model (being deleted) and its file."""
        for row in self.store.all("SELECT id FROM uploads WHERE federated_model = ?", (model_id,)):
            self._delete(row["id"])

    def sweep(self) -> int:
        """Delete expired uploads and files no open upload owns (left by a crash, or by
        a deleted model); return how many went. Call only at start-up.

        With a shared database only expired uploads go: another replica may be opening
        an upload right now, its row committed after this sweep read the open uploads and
        its file made before the sweep lists the files. Files a crash left without their
        row stay there; the expiry deletes every other upload's file with its row.
        """
        gone = self.expire()
        if self.store.db.shared:
            return gone
        owned = {r["id"] for r in self.store.all("SELECT id FROM uploads WHERE update_id IS NULL")}
        return gone + self.parts.sweep(owned)
