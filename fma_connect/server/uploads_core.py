"""The core under :class:`~.uploads.Uploads`: what every part shares.

Its attributes (the store, the blob store, the uploads' files, the expiry and quota,
the locks and writers), an upload's row as a client may see it, its manifest (the
digests read once an upload) and the chunks it still lacks, how the routes describe
it, and deleting an upload, expired or not.
"""

from __future__ import annotations

import math
import re
import secrets
import threading
import time
from pathlib import Path
from typing import Any

import orjson

from .blobs import BlobStore
from .chunk_writes import ChunkWriters
from .errors import not_found
from .locks import KeyedLocks
from .manifests import Manifest
from .store import Store
from .store_core import Row

__all__ = ["UploadsCore"]

_ID = re.compile(r"[0-9a-f]{32}")
#: The columns :meth:`Uploads.row` reads: all but the digests (see ``_manifest``).
_COLUMNS = (
    "id, federated_model, client, fields, codec, size, chunk_size, manifest, "
    "idempotency_key, update_id, created_on, expires, completing_until"
)
#: An open upload's activity: it lives ``expiry`` seconds from now.
_TOUCH = "UPDATE uploads SET expires = ? WHERE id = ? AND update_id IS NULL"
#: Uploads whose digests are kept parsed.
_CACHED_MANIFESTS = 64


class UploadsCore:
    """The state of :class:`~.uploads.Uploads` that its parts share.

    See :class:`~.uploads.Uploads` for the arguments and attributes.
    """

    def __init__(
        self, store: Store, blobs: BlobStore, data_dir: Path, *, expiry: float, quota: int
    ) -> None:
        self.store = store
        self.blobs = blobs
        #: The uploads' bytes, as the blob store keeps them (see :mod:`.upload_parts`).
        self.parts = blobs.upload_parts(data_dir)
        self.directory = data_dir / "uploads"
        self.expiry = expiry
        self.quota = quota
        #: Names this run of the server: chunks recorded under another were received by
        #: an earlier run, and are checked again at completion (see :mod:`.uploads`).
        self.boot = secrets.token_hex(8)
        self._locks = KeyedLocks()  # completing an upload: one at a time
        self._digests: dict[str, tuple[str, ...]] = {}  # see _manifest
        self._cache_lock = threading.Lock()
        #: Who writes which chunk now (see :mod:`.chunk_writes`).
        self.writers = ChunkWriters(self.parts)

    # -- state -------------------------------------------------------------------------

    def row(self, client: str, upload_id: str) -> Row:
        """The client's upload ``upload_id``.

        Raises:
            HTTPError: 404 when there is no such upload of this client (or it expired).
        """
        row = None
        if _ID.fullmatch(upload_id):
            row = self.store.one(f"SELECT {_COLUMNS} FROM uploads WHERE id = ?", (upload_id,))
        if row is None or row["client"] != client:
            raise not_found(f"No upload {upload_id} of this client (it may have expired).")
        if row["update_id"] is None and row["expires"] < time.time():
            self._delete(upload_id)
            raise not_found(f"Upload {upload_id} expired; start it again.")
        return row

    def missing(self, row: Row) -> list[int]:
        """The indices of the chunks of ``row`` not received yet."""
        have = {
            r["idx"]
            for r in self.store.all("SELECT idx FROM upload_chunks WHERE upload = ?", (row["id"],))
        }
        return [i for i in range(math.ceil(row["size"] / row["chunk_size"])) if i not in have]

    def describe(self, client: str, upload_id: str) -> dict[str, Any]:
        """An upload as the routes answer it."""
        row = self.row(client, upload_id)
        missing = self.missing(row) if row["update_id"] is None else []
        manifest = self._manifest(row)
        return {
            "id": row["id"],
            "federated_model": row["federated_model"],
            "size": row["size"],
            "chunk_size": row["chunk_size"],
            "missing": missing,
            "received_bytes": row["size"] - sum(manifest.span(i)[1] for i in missing),
            "expires_at": _iso(row["expires"]),
            "update": row["update_id"],
        }

    # -- upkeep ------------------------------------------------------------------------

    def expire(self) -> int:
        """Delete expired uploads; return how many went."""
        rows = self.store.all("SELECT id FROM uploads WHERE expires < ?", (time.time(),))
        for row in rows:
            self._delete(row["id"])
        return len(rows)

    def _delete(self, upload_id: str) -> None:
        with self.store.transaction() as conn:
            conn.execute("DELETE FROM uploads WHERE id = ?", (upload_id,))
        self.parts.discard(upload_id)
        with self._cache_lock:
            self._digests.pop(upload_id, None)

    def _touch(self, upload_id: str) -> None:
        with self.store.transaction() as conn:
            conn.execute(
                _TOUCH,
                (time.time() + self.expiry, upload_id),
            )

    def _path(self, upload_id: str) -> Path:
        return self.parts.path(upload_id)

    def _manifest(self, row: Row) -> Manifest:
        """The manifest of an upload row (:meth:`row`'s, without its digests): every chunk's
        PUT needs it, and a manifest's digests (up to ~280 kB of JSON) never change, so
        they are read and parsed once an upload, not once a chunk."""
        with self._cache_lock:
            digests = self._digests.get(row["id"])
        if digests is None:
            found = self.store.one("SELECT chunks FROM uploads WHERE id = ?", (row["id"],))
            digests = tuple(orjson.loads(found["chunks"])) if found else ()
            with self._cache_lock:
                if len(self._digests) >= _CACHED_MANIFESTS:
                    self._digests.pop(next(iter(self._digests)))  # the oldest
                self._digests[row["id"]] = digests
        return Manifest.from_row(row, digests)


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
