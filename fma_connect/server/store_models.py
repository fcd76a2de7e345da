"""The models' rows of :class:`~.store.Store`: the models, their clients as a model lists
them, and their artifacts (the initial model, and aggregates published).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .database import Connection
from .errors import not_found
from .store_core import (
    _JSON_COLUMNS,
    NewBlob,
    Row,
    StoreCore,
    _insert_blob,
    _json_or_none,
    _require,
    now,
)

__all__ = ["MODEL_FIELDS", "ModelRows"]

MODEL_FIELDS = (
    "name",
    "developer",
    "aggregator",
    "allow_aggregation",
    "requirement",
    "requirement_args",
    "update_schema",
    "client_agg_results_schema",
    "furthest_base_agg",
    "aggregate_fraction",
    "aggregate_values",
    "aggregator_args",
    "round_deadline",
    "round_quorum",
    "min_clients",
    "drop_after_missed",
    "enrolment",
)


class ModelRows(StoreCore):
    """The models and their artifacts (a part of :class:`~.store.Store`)."""

    def insert_model(
        self,
        fields: Mapping[str, Any],
        clients: Sequence[str],
        initial: NewBlob | None,
    ) -> int:
        """Create a model; ``initial`` is the blob of its initial weights.

        The initial weights become the model's current artifact (version ``0.0.0``).
        """
        stamp = now()
        values = [_model_value(k, fields.get(k)) for k in MODEL_FIELDS]
        columns = ", ".join(MODEL_FIELDS)
        with self.transaction() as conn:
            cursor = conn.execute(
                f"INSERT INTO models ({columns}, created_on, last_modified) "
                f"VALUES ({', '.join('?' * len(MODEL_FIELDS))}, ?, ?) RETURNING id",
                (*values, stamp, stamp),
            )
            model_id = int(cursor.fetchone()["id"])
            _set_clients(conn, model_id, clients)
            if initial is not None:
                blob = _insert_blob(conn, model_id, initial)
                _insert_artifact(conn, model_id, blob, None, "0.0.0")
        return model_id

    def update_model(
        self, model_id: int, fields: Mapping[str, Any], clients: Sequence[str] | None
    ) -> None:
        """Change some fields of a model (and replace its clients when given)."""
        with self.transaction() as conn:
            if fields.get("enrolment") in ("token", "keys"):
                # A model that starts checking who joins admits none of its members until
                # they enrol as it now requires (a registration made while it was open,
                # or under the other mode, is not an admission).
                conn.execute(
                    "UPDATE model_clients SET admitted_key = NULL, admitted_on = NULL "
                    "WHERE federated_model = ? AND federated_model IN (SELECT id FROM models "
                    "WHERE id = ? AND COALESCE(enrolment, 'open') <> ?)",
                    (model_id, model_id, fields["enrolment"]),
                )
            for key, value in fields.items():
                if key in MODEL_FIELDS:
                    conn.execute(
                        f"UPDATE models SET {key} = ? WHERE id = ?",
                        (_model_value(key, value), model_id),
                    )
            conn.execute("UPDATE models SET last_modified = ? WHERE id = ?", (now(), model_id))
            if clients is not None:
                # Re-registered in the list's order; a client that stays keeps its admission.
                admitted = {
                    row["client"]: (row["admitted_key"], row["admitted_on"])
                    for row in conn.execute(
                        "SELECT client, admitted_key, admitted_on FROM model_clients "
                        "WHERE federated_model = ? AND admitted_on IS NOT NULL",
                        (model_id,),
                    ).fetchall()
                }
                conn.execute("DELETE FROM model_clients WHERE federated_model = ?", (model_id,))
                _set_clients(conn, model_id, clients)
                conn.executemany(
                    "UPDATE model_clients SET admitted_key = ?, admitted_on = ? "
                    "WHERE federated_model = ? AND client = ?",
                    [(key, on, model_id, c) for c, (key, on) in admitted.items() if c in clients],
                )

    def delete_model(self, model_id: int) -> list[str]:
        """Delete a model with everything it owns; return the blob files to remove."""
        with self.transaction() as conn:
            rows = conn.execute("SELECT filename FROM blobs WHERE federated_model = ?", (model_id,))
            files = [row["filename"] for row in rows.fetchall()]
            scores = "SELECT id FROM aggregates WHERE federated_model = ?"
            conn.execute(f"DELETE FROM scores WHERE aggregate IN ({scores})", (model_id,))
            for table in (
                "updates",
                "artifacts",
                "aggregates",
                "aggregator_states",
                "model_clients",
                "blobs",
            ):
                conn.execute(f"DELETE FROM {table} WHERE federated_model = ?", (model_id,))
            conn.execute("DELETE FROM models WHERE id = ?", (model_id,))
        return files

    def get_model(self, model_id: int) -> Row | None:
        """Return a model row (without its clients)."""
        row = self.one("SELECT * FROM models WHERE id = ?", (model_id,))
        if row is not None:
            row["allow_aggregation"] = bool(row["allow_aggregation"])
        return row

    # -- artifacts -----------------------------------------------------------------

    def publish(self, aggregate: Row, version: str) -> int:
        """Make an aggregate the model's current artifact; return the artifact id.

        Raises:
            HTTPError: 404, the aggregate is gone (its model was deleted meanwhile).
        """
        with self.transaction() as conn:
            _require(conn, "aggregates", aggregate["id"], not_found)
            return _insert_artifact(
                conn, aggregate["federated_model"], aggregate["blob"], aggregate["id"], version
            )

    def initial_artifact(self, model_id: int) -> Row | None:
        """The artifact of a model's initial model (made when it was created), if any."""
        sql = (
            "SELECT * FROM artifacts WHERE federated_model = ? AND aggregate IS NULL "
            "ORDER BY id LIMIT 1"
        )
        return self.one(sql, (model_id,))

    def get_artifact(self, artifact_id: int) -> Row | None:
        """Return an artifact row."""
        return self.one("SELECT * FROM artifacts WHERE id = ?", (artifact_id,))


def _model_value(key: str, value: Any) -> Any:
    if key in _JSON_COLUMNS:
        return _json_or_none(value)
    if key == "allow_aggregation":
        return int(bool(value))
    return value


def _set_clients(conn: Connection, model_id: int, clients: Sequence[str]) -> None:
    conn.executemany(
        "INSERT INTO model_clients (federated_model, client) VALUES (?, ?) ON CONFLICT DO NOTHING",
        [(model_id, client) for client in clients],
    )


def _insert_artifact(
    conn: Connection, model_id: int, blob_id: int, aggregate_id: int | None, version: str
) -> int:
    cursor = conn.execute(
        "INSERT INTO artifacts (federated_model, blob, aggregate, version, created_on) "
        "VALUES (?, ?, ?, ?, ?) RETURNING id",
        (model_id, blob_id, aggregate_id, version, now()),
    )
    artifact_id = int(cursor.fetchone()["id"])
    conn.execute("UPDATE models SET current_artifact = ? WHERE id = ?", (artifact_id, model_id))
    return artifact_id
