"""Opening uploads (a part of :class:`~.uploads.Uploads`): a manifest becomes an upload.

The same manifest finds the client's upload open already; a new one makes room under
the client's quota (superseding its older uploads for the model), and is started with
the chunks the model's earlier blobs hold copied in.
"""

from __future__ import annotations

import secrets
import time

import orjson

from .errors import detail
from .manifests import Manifest, digest_of
from .store_core import Row, now
from .uploads_core import UploadsCore

__all__ = ["UploadOpening"]


class UploadOpening(UploadsCore):
    """Opening uploads (a part of :class:`~.uploads.Uploads`)."""

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
