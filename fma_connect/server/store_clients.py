"""The clients' rows of :class:`~.store.Store`: registrations with models, who a
model's enrolment admits, and what each client did (its updates, the rounds it missed).
"""

from __future__ import annotations

import uuid as uuid_module

from .database import Connection
from .errors import not_found
from .store_core import PENDING, RUNNING, Row, StoreCore, _require, now

__all__ = ["ClientRows"]


class ClientRows(StoreCore):
    """The clients and their registrations with models (a part of :class:`~.store.Store`)."""

    def client_exists(self, client: str) -> bool:
        """Whether a client has this UUID."""
        return self.one("SELECT uuid FROM clients WHERE uuid = ?", (client,)) is not None

    def register_client(self, model_id: int, client: str | None) -> str:
        """Register ``client`` (a new one if None) with a model; return its UUID.

        Raises:
            HTTPError: 404, the model is gone (deleted since the request looked it up).
        """
        with self.transaction() as conn:
            _require(conn, "models", model_id, not_found)
            if client is None:
                client = str(uuid_module.uuid4())
                conn.execute(
                    "INSERT INTO clients (uuid, created_on) VALUES (?, ?)", (client, now())
                )
            conn.execute(
                "INSERT INTO model_clients (federated_model, client) VALUES (?, ?) "
                "ON CONFLICT DO NOTHING",
                (model_id, client),
            )
        return client

    def is_registered(self, model_id: int, client: str) -> bool:
        """Whether ``client`` is registered with the model, and enrolled as it requires.

        A model of ``enrolment`` ``token`` takes only clients it admitted (a token of it
        spent by their enrolment, see ``model_clients.admitted_on``) that have an active
        key; one of ``keys``, only clients whose active key is on its allow-list now (a
        key removed from it is refused at once). A registration alone (an open model's
        ``register_client``, or one made before the model required enrolment) admits to
        open models only. Checked on every request: nothing is cached.
        """
        return self.one(_MEMBER, (model_id, client)) is not None

    def is_member(self, conn: Connection, model_id: int, client: str) -> bool:
        """:meth:`is_registered`, read in the transaction ``conn`` (a write that must
        not outlive a revocation or a removal from the model checks it there)."""
        return conn.execute(_MEMBER, (model_id, client)).fetchone() is not None

    def model_clients(self, model_id: int) -> list[str]:
        """UUIDs of the clients registered with a model, in registration order."""
        sql = "SELECT client FROM model_clients WHERE federated_model = ? ORDER BY rowid"
        return [row["client"] for row in self.all(sql, (model_id,))]

    def client_activity(self, model_id: int) -> list[Row]:
        """The model's registered clients in registration order, with their updates to it.

        Each row: ``uuid``, ``registered_on`` (the client's ``created_on``: registrations
        carry no time of their own), ``last_seen`` (``created_on`` of its newest update
        to the model, or None) and ``updates`` (how many it sent to the model).
        """
        sql = (
            "SELECT mc.client AS uuid, c.created_on AS registered_on, "
            "(SELECT u.created_on FROM updates u WHERE u.federated_model = mc.federated_model "
            "AND u.client = mc.client ORDER BY u.id DESC LIMIT 1) AS last_seen, "
            "(SELECT COUNT(*) FROM updates u WHERE u.federated_model = mc.federated_model "
            "AND u.client = mc.client) AS updates "
            "FROM model_clients mc JOIN clients c ON c.uuid = mc.client "
            "WHERE mc.federated_model = ? ORDER BY mc.rowid"
        )
        return self.all(sql, (model_id,))

    def missed_rounds(self, model_id: int) -> dict[str, int]:
        """Registered client -> the model's rounds in a row that ran without it.

        A client whose newest update to the model is waiting (PENDING or RUNNING) missed
        none; else the count is of the aggregates made after the round of that update
        (after the update itself, when no round took it), or after the client was created
        when it sent none.
        """
        # One query: the model's aggregates are counted where they are, not read out
        # (a decision runs on every update of a waiting round).
        sql = (
            "SELECT mc.client, CASE "
            "WHEN u.status IN (?, ?) THEN 0 "
            "WHEN u.applied_aggregate IS NOT NULL THEN (SELECT COUNT(*) FROM aggregates a "
            "WHERE a.federated_model = mc.federated_model AND a.id > u.applied_aggregate) "
            "ELSE (SELECT COUNT(*) FROM aggregates a WHERE a.federated_model = "
            "mc.federated_model AND a.created_on > COALESCE(u.created_on, c.created_on)) "
            "END AS missed "
            "FROM model_clients mc JOIN clients c ON c.uuid = mc.client "
            "LEFT JOIN updates u ON u.id = (SELECT MAX(id) FROM updates "
            "WHERE federated_model = mc.federated_model AND client = mc.client) "
            "WHERE mc.federated_model = ?"
        )
        rows = self.all(sql, (PENDING, RUNNING, model_id))
        return {row["client"]: int(row["missed"]) for row in rows}

    def status_counts(self, model_id: int) -> dict[str, dict[int, int]]:
        """Client UUID -> status number -> how many of its updates to the model have it."""
        sql = (
            "SELECT client, status, COUNT(*) AS n FROM updates WHERE federated_model = ? "
            "GROUP BY client, status"
        )
        counts: dict[str, dict[int, int]] = {}
        for row in self.all(sql, (model_id,)):
            counts.setdefault(row["client"], {})[row["status"]] = int(row["n"])
        return counts

    def unregister_client(self, model_id: int, client: str) -> bool:
        """Remove a client's registration with a model; return whether it was registered.

        Its updates stay stored (see docs/ROUNDS.md for what a round does with them).
        """
        with self.transaction() as conn:
            cursor = conn.execute(
                "DELETE FROM model_clients WHERE federated_model = ? AND client = ?",
                (model_id, client),
            )
            return cursor.rowcount > 0


#: A registered client that the model's enrolment admits (see Store.is_registered).
_MEMBER = (
    "SELECT mc.client FROM model_clients mc JOIN models m ON m.id = mc.federated_model "
    "WHERE mc.federated_model = ? AND mc.client = ? AND (m.enrolment IS NULL "
    "OR m.enrolment = 'open' "
    "OR (m.enrolment = 'token' AND mc.admitted_on IS NOT NULL AND EXISTS (SELECT 1 "
    "FROM client_keys k WHERE k.client = mc.client AND k.status = 'active')) "
    "OR (m.enrolment = 'keys' AND EXISTS (SELECT 1 FROM client_keys k JOIN allowed_keys a "
    "ON a.key_id = k.key_id AND a.federated_model = m.id "
    "WHERE k.client = mc.client AND k.status = 'active')))"
)
