"""The updates' rows of :class:`~.store.Store`: an update stored (once per idempotency
key), looked up, and its status as rounds take it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .database import Connection
from .store_core import (
    PENDING,
    RUNNING,
    NewBlob,
    Row,
    StoreCore,
    _deleted,
    _insert_blob,
    _require,
    now,
)

__all__ = ["UpdateRows"]


class UpdateRows(StoreCore):
    """The updates (a part of :class:`~.store.Store`)."""

    def insert_update(
        self, fields: Mapping[str, Any], blob: NewBlob, key: str | None
    ) -> tuple[Row, bool]:
        """Store an update; return ``(row, created)``.

        With an idempotency ``key`` already used by this client, nothing is stored and
        the original update comes back with ``created`` False (the caller then deletes
        the blob file it wrote).

        Raises:
            HTTPError: 400 naming ``federated_model``, when the model is gone (deleted
                while the update was being received).
        """
        with self.transaction() as conn:
            model_id = fields["federated_model"]
            _require(conn, "models", model_id, lambda: _deleted("federated_model", model_id))
            if key is not None:
                sql = "SELECT id FROM updates WHERE client = ? AND idempotency_key = ?"
                found = conn.execute(sql, (fields["client"], key)).fetchone()
                if found is not None:
                    return self._update(conn, found["id"]), False
            blob_id = _insert_blob(conn, fields["federated_model"], blob)
            cursor = conn.execute(
                "INSERT INTO updates (federated_model, client, base_aggregate, num_examples, "
                "status, blob, idempotency_key, created_on) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "RETURNING id",
                (
                    fields["federated_model"],
                    fields["client"],
                    fields.get("base_aggregate"),
                    fields.get("num_examples"),
                    PENDING,
                    blob_id,
                    key,
                    now(),
                ),
            )
            return self._update(conn, int(cursor.fetchone()["id"])), True

    def update_by_key(self, client: str, key: str) -> Row | None:
        """Return the update ``client`` sent with idempotency ``key``."""
        sql = f"{_UPDATE_SELECT} WHERE u.client = ? AND u.idempotency_key = ?"
        return self.one(sql, (client, key))

    def get_update(self, update_id: int) -> Row | None:
        """Return an update row (with its blob's codec)."""
        return self.one(f"{_UPDATE_SELECT} WHERE u.id = ?", (update_id,))

    def pending_updates(self, model_id: int) -> list[Row]:
        """The model's PENDING updates, oldest first."""
        sql = f"{_UPDATE_SELECT} WHERE u.federated_model = ? AND u.status = ? ORDER BY u.id"
        return self.all(sql, (model_id, PENDING))

    def set_update_status(self, ids: Sequence[int], status: int, only: int | None = None) -> None:
        """Set the status of some updates (only of those in status ``only``, if given)."""
        sql = "UPDATE updates SET status = ? WHERE id = ?"
        params: list[tuple[int, ...]] = [(status, i) for i in ids]
        if only is not None:
            sql += " AND status = ?"
            params = [(*p, only) for p in params]
        with self.transaction() as conn:
            conn.executemany(sql, params)

    def reset_running(self) -> int:
        """Put updates left RUNNING by a crash back to PENDING; return how many."""
        with self.transaction() as conn:
            cursor = conn.execute(
                "UPDATE updates SET status = ? WHERE status = ?", (PENDING, RUNNING)
            )
            return cursor.rowcount

    def _update(self, conn: Connection, update_id: int) -> Row:
        row: Row = conn.execute(f"{_UPDATE_SELECT} WHERE u.id = ?", (update_id,)).fetchone()
        return row


_UPDATE_SELECT = (
    "SELECT u.*, b.codec AS codec, b.nbytes AS nbytes FROM updates u JOIN blobs b ON b.id = u.blob"
)
