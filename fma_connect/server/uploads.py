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
"""

from __future__ import annotations

import math
import mmap
import re
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import blake3
import orjson

from .blobs import BlobStore, BlobWriter
from .chunk_writes import ChunkWriters
from .errors import HTTPError, detail, not_found
from .locks import KeyedLocks
from .manifests import Manifest, digest_of
from .store import Store
from .store_core import Row, now

__all__ = ["DEFAULT_EXPIRY", "DEFAULT_UPLOAD_QUOTA", "Uploads"]

#: Seconds an upload lives after its last activity.
DEFAULT_EXPIRY = 24 * 3600
#: Most bytes one client's open uploads may declare in all (two of the largest updates).
DEFAULT_UPLOAD_QUOTA = 32 << 30
_ID = re.compile(r"[0-9a-f]{32}")
#: The columns :meth:`Uploads.row` reads: all but the digests (see ``_manifest``).
_COLUMNS = (
    "id, federated_model, client, fields, codec, size, chunk_size, manifest, "
    "idempotency_key, update_id, created_on, expires, completing_until"
)
#: Seconds a server's claim to complete an upload lasts (a replica that died completing
#: it leaves the upload to a later completion once it passed).
_COMPLETION_CLAIM = 600.0
#: Most seconds a completion waits for another replica's completion of the same upload.
_COMPLETION_WAIT = 120.0
#: An open upload's activity: it lives ``expiry`` seconds from now.
_TOUCH = "UPDATE uploads SET expires = ? WHERE id = ? AND update_id IS NULL"
#: Uploads whose digests are kept parsed.
_CACHED_MANIFESTS = 64
#: Bytes hashed per read when a chunk is checked against its digest.
_VERIFY_SLICE = 8 << 20

#: What the HTTP routes hand to :meth:`Uploads.complete` to store a finished payload:
#: ``(fields, codec name, blob writer, idempotency key) -> (update row, created)``.
AddUpdate = Callable[[dict[str, Any], str, BlobWriter, str | None], tuple[Row, bool]]


class Uploads:
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
        #: an earlier run, and are checked again at completion (see the module notes).
        self.boot = secrets.token_hex(8)
        self._locks = KeyedLocks()  # completing an upload: one at a time
        self._digests: dict[str, tuple[str, ...]] = {}  # see _manifest
        self._cache_lock = threading.Lock()
        #: Who writes which chunk now (see :mod:`.chunk_writes`).
        self.writers = ChunkWriters(self.parts)

    # -- opening ---------------------------------------------------------------------

    def open(self, client: str, manifest: Manifest) -> tuple[Row, bool]:
        """Start an upload of ``manifest`` for ``client``, or find the same one open.

        Returns:
            The upload (as :meth:`describe` gives it) and whether it is new.

        Raises:
            HTTPError: 409 when the client's open uploads leave no room for it.
        """
        self.expire()
        identity = manifest.key()
        found = self.store.one(
            "SELECT id FROM uploads WHERE client = ? AND manifest = ? AND update_id IS NULL",
            (client, identity),
        )
        if found is not None:
            self._touch(found["id"])
            return self.describe(client, found["id"]), False
        self._make_room(client, manifest)
        upload_id = secrets.token_hex(16)
        try:
            with self.store.transaction() as conn:
                conn.execute(
                    "INSERT INTO uploads (id, federated_model, client, fields, codec, size, "
                    "chunk_size, chunks, manifest, idempotency_key, created_on, expires) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        upload_id,
                        manifest.fields["federated_model"],
                        client,
                        orjson.dumps(manifest.fields).decode(),
                        manifest.codec,
                        manifest.size,
                        manifest.chunk_size,
                        orjson.dumps(manifest.digests).decode(),
                        identity,
                        f"upload-{upload_id}",
                        now(),
                        time.time() + self.expiry,
                    ),
                )
            # The row first: a file is never without its row (see sweep).
            self.parts.create(upload_id, manifest.size)
            self._copy_known(upload_id, manifest)
        except BaseException:
            self._delete(upload_id)
            raise
        return self.describe(client, upload_id), True

    def _make_room(self, client: str, manifest: Manifest) -> None:
        """Supersede the client's older uploads for the model while the quota needs it."""
        model_id = manifest.fields["federated_model"]
        rows = self.store.all(
            "SELECT id, federated_model, size FROM uploads WHERE client = ? "
            "AND update_id IS NULL ORDER BY expires",
            (client,),
        )
        held = sum(row["size"] for row in rows)
        for row in rows:
            if held + manifest.size <= self.quota:
                break
            if row["federated_model"] == model_id:
                self._delete(row["id"])
                held -= row["size"]
        if held + manifest.size > self.quota:
            raise detail(
                409,
                f"Client {client}'s open uploads declare {held} bytes; this one's {manifest.size} "
                f"would pass the {self.quota}-byte quota (fma-connect serve --upload-quota). "
                "Complete or DELETE an open upload (GET /api/v1/uploads/ lists them), or wait "
                "for it to expire.",
                uploads=[row["id"] for row in rows],
            )

    def _copy_known(self, upload_id: str, manifest: Manifest) -> None:
        """Fill the chunks whose digests the model's earlier blobs hold; record them."""
        wanted = sorted(set(manifest.digests))
        known: dict[str, Row] = {}
        for start in range(0, len(wanted), 500):  # SQLite's bound on parameters
            part = wanted[start : start + 500]
            rows = self.store.all(
                'SELECT c.digest, c."offset", c.length, b.filename FROM chunk_index c '
                "JOIN blobs b ON b.id = c.blob WHERE c.federated_model = ? AND c.digest IN "
                f"({', '.join('?' * len(part))})",
                (manifest.fields["federated_model"], *part),
            )
            known.update((row["digest"], row) for row in rows)
        if not known:
            return
        copied = []
        for index, digest in enumerate(manifest.digests):
            source = known.get(digest)
            offset, length = manifest.span(index)
            if source is None or source["length"] != length:
                continue
            data = self.blobs.read_range(source["filename"], source["offset"], length)
            if data is None or digest_of(data) != digest:
                continue  # the blob is gone or not what was indexed: sent again
            self.parts.put(upload_id, index, offset, data)
            copied.append(index)
        with self.store.transaction() as conn:
            conn.executemany(
                "INSERT INTO upload_chunks (upload, idx, boot) VALUES (?, ?, ?) "
                "ON CONFLICT DO NOTHING",
                [(upload_id, index, self.boot) for index in copied],
            )

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

    def listing(self, client: str) -> list[dict[str, Any]]:
        """The client's open uploads."""
        self.expire()
        rows = self.store.all(
            "SELECT id FROM uploads WHERE client = ? AND update_id IS NULL ORDER BY expires",
            (client,),
        )
        return [self.describe(client, row["id"]) for row in rows]

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

    # -- upkeep ------------------------------------------------------------------------

    def abandon(self, client: str, upload_id: str) -> None:
        """Delete an upload of ``client`` (open or complete) and its file."""
        self.row(client, upload_id)
        self._delete(upload_id)

    def abandon_model(self, model_id: int) -> None:
        """Delete every upload of a model (being deleted) and its file."""
        for row in self.store.all("SELECT id FROM uploads WHERE federated_model = ?", (model_id,)):
            self._delete(row["id"])

    def expire(self) -> int:
        """Delete expired uploads; return how many went."""
        rows = self.store.all("SELECT id FROM uploads WHERE expires < ?", (time.time(),))
        for row in rows:
            self._delete(row["id"])
        return len(rows)

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
