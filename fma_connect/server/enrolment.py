"""Enrolment tokens and allow-lists of the identity tables: what admits a client to a
model of ``enrolment`` ``token`` or ``keys`` (docs/SECURITY.md). Part of
:class:`~.keys.Keys`.

Enrolment tokens are stored as their SHA-256 only (they are 32 random bytes: a stolen
database gives no enrolment token; it holds the admin token in the clear, though, which
issues new ones).
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

from .database import Connection
from .deadlines import Clock
from .errors import forbidden, not_found
from .store import Store
from .store_core import INVALID, PENDING, RUNNING, Row, now

__all__ = ["EnrolmentTokens", "binding_refused"]


class EnrolmentTokens:
    """The enrolment tokens and allow-lists (a part of :class:`~.keys.Keys`, which sets
    these attributes)."""

    store: Store
    clock: Clock

    def issue_token(
        self, model_id: int, expires_in: float | None, client: str | None = None
    ) -> tuple[str, float | None]:
        """A new one-time enrolment token of the model; return it and when it expires.

        Args:
            model_id: The model.
            expires_in: Seconds it lives (None: until used).
            client: The existing client it is bound to (None: for a new client, or one
                enrolled with an active key). Only a bound token binds a key to an
                existing client without one (never enrolled, or its keys revoked).

        Raises:
            HTTPError: 404, the model or the client is gone.
        """
        # Hex, not base64url: a token that began with '-' (1 in 64 of those) is taken
        # for an option when pasted after `--token` on a command line.
        token = secrets.token_hex(32)
        expires = None if expires_in is None else self.clock() + expires_in
        with self.store.transaction() as conn:
            if conn.execute("SELECT id FROM models WHERE id = ?", (model_id,)).fetchone() is None:
                raise not_found()
            if client is not None and (
                conn.execute("SELECT uuid FROM clients WHERE uuid = ?", (client,)).fetchone()
                is None
            ):
                raise not_found(f"No client {client}: a token is bound to an existing client.")
            conn.execute(
                "INSERT INTO enrolment_tokens (token_hash, federated_model, created_on, expires, "
                "client) VALUES (?, ?, ?, ?, ?)",
                (_token_hash(token), model_id, now(), expires, client),
            )
        return token, expires

    def spend_token(
        self, conn: Connection, model_id: int, token: str, client: str, *, binding: bool = False
    ) -> None:
        """Spend a token in an enrolment's transaction (see ``admit`` of
        :meth:`~.keys.Keys.enrol`).

        Args:
            conn: The enrolment's transaction.
            model_id: The model enrolled with.
            token: The token sent.
            client: The enrolling client.
            binding: Whether the enrolment binds a key to an existing client that has
                none (never enrolled, or its keys revoked): that needs a token bound to it.

        Raises:
            HTTPError: 403, the token is unknown, of another model, spent, expired, bound
                to another client, or not bound to the client it must be.
        """
        row = conn.execute(
            "SELECT federated_model, expires, used_on, client FROM enrolment_tokens "
            "WHERE token_hash = ?",
            (_token_hash(token),),
        ).fetchone()
        problem = None
        if row is None or row["federated_model"] != model_id:
            problem = f"is not an enrolment token of federated model {model_id}"
        elif row["used_on"] is not None:
            problem = f"was used already (on {row['used_on']}): a token enrols one client"
        elif row["expires"] is not None and row["expires"] < self.clock():
            problem = "has expired"
        elif row["client"] is not None and row["client"] != client:
            problem = f"is bound to client {row['client']}, not {client}"
        elif binding and row["client"] is None:
            raise forbidden(binding_refused(client, model_id))
        if problem is not None:
            raise forbidden(f"The enrolment token {problem}; ask the admin for a new one.")
        conn.execute(
            "UPDATE enrolment_tokens SET used_by = ?, used_on = ? WHERE token_hash = ?",
            (client, now(), _token_hash(token)),
        )

    def allow(self, model_id: int, key_id: str, public_key: str) -> bool:
        """Put a key on the model's allow-list; return whether it was not on it yet.

        Raises:
            HTTPError: 404, the model is gone.
        """
        with self.store.transaction() as conn:
            if conn.execute("SELECT id FROM models WHERE id = ?", (model_id,)).fetchone() is None:
                raise not_found()
            cursor = conn.execute(
                "INSERT INTO allowed_keys (federated_model, key_id, public_key, added_on) "
                "VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (model_id, key_id, public_key, now()),
            )
            return cursor.rowcount > 0

    def disallow(self, model_id: int, key_id: str) -> bool:
        """Take a key off the model's allow-list; return whether it was on it.

        In the same transaction the model's waiting updates signed by the key (PENDING,
        and RUNNING: see :meth:`~.keys.Keys.revoke`) are marked INVALID with the reason.
        """
        with self.store.transaction() as conn:
            cursor = conn.execute(
                "DELETE FROM allowed_keys WHERE federated_model = ? AND key_id = ?",
                (model_id, key_id),
            )
            if cursor.rowcount > 0:
                reason = f"the key that signed it ({key_id}) was taken off the allow-list"
                _invalidate_signed_by(conn, key_id, f"{reason} (on {now()})", model_id)
            return cursor.rowcount > 0

    def allowed(self, model_id: int) -> list[Row]:
        """The model's allow-list, oldest first."""
        sql = (
            "SELECT key_id, public_key, added_on FROM allowed_keys WHERE federated_model = ? "
            "ORDER BY added_on, key_id"
        )
        return self.store.all(sql, (model_id,))

    def is_allowed(self, conn: Connection, model_id: int, key_id: str) -> bool:
        """Whether the key is on the model's allow-list (in a transaction)."""
        sql = "SELECT key_id FROM allowed_keys WHERE federated_model = ? AND key_id = ?"
        return conn.execute(sql, (model_id, key_id)).fetchone() is not None


def binding_refused(client: str, model_id: int) -> str:
    """Why a key is not bound to an existing client without a token bound to it."""
    return (
        f"Client {client} exists and has no active key: a key is bound to an existing "
        "client only with an enrolment token bound to that client (fma-connect admin "
        f"enrolment-token {model_id} --client {client}); a new client enrols without "
        "CLIENT-UUID and gets a new UUID."
    )


def _invalidate_signed_by(
    conn: Connection, key_id: str, reason: str, model_id: int | None = None
) -> None:
    """Mark the waiting (PENDING or RUNNING) updates signed by ``key_id`` INVALID."""
    sql = (
        "UPDATE updates SET status = ?, status_reason = ? WHERE status IN (?, ?) AND id IN "
        "(SELECT update_id FROM update_signatures WHERE key_id = ?)"
    )
    params: tuple[Any, ...] = (INVALID, reason, PENDING, RUNNING, key_id)
    if model_id is not None:
        sql += " AND federated_model = ?"
        params = (*params, model_id)
    conn.execute(sql, params)


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
