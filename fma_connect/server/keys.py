"""The identity tables of the reference server: client keys, enrolment tokens, allow-lists,
request nonces and update signatures (schema step 5; docs/SECURITY.md).

Every read here goes to the database, on every request: a revocation, a key rotated or
a key taken off an allow-list is refused at once by every replica (nothing is cached).
A key row is never deleted: a rotated or revoked key stays to verify the updates it
signed (``status`` says which: ``active``, ``rotated``, ``revoked``; a client has at
most one active key). Enrolment tokens are stored as their SHA-256 only (they are 32
random bytes: a hash that a stolen database gives no token from).
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import uuid as uuid_module
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .database import Connection
from .deadlines import Clock
from .errors import detail, forbidden, not_found
from .store import Row, Store, now

__all__ = ["ACTIVE", "REVOKED", "ROTATED", "WINDOW", "Keys", "Signer"]

ACTIVE, ROTATED, REVOKED = "active", "rotated", "revoked"
#: Seconds a signed request's timestamp may be off the server's clock, either way.
WINDOW = 300.0
#: Seconds between two prunings of expired nonces by one server.
_PRUNE_EVERY = 60.0
_CLIENT_STATE = (
    "SELECT c.uuid, c.revoked_on, k.key_id, k.public_key, "
    "(SELECT COUNT(*) FROM client_keys x WHERE x.client = c.uuid) AS keys "
    "FROM clients c LEFT JOIN client_keys k ON k.client = c.uuid AND k.status = 'active' "
    "WHERE c.uuid = ?"
)


@dataclass(frozen=True)
class Signer:
    """The key that signed a request: its id and raw public key."""

    key_id: str
    public_key: bytes


class Keys:
    """The identity tables, over the server's :class:`~.store.Store`.

    Args:
        store: The database.
        clock: The time now (Unix seconds): timestamps, token expiry, nonce expiry.
    """

    def __init__(self, store: Store, clock: Clock) -> None:
        self.store = store
        self.clock = clock
        self._pruned = 0.0
        self._prune_lock = threading.Lock()

    # -- clients and their keys -------------------------------------------------------

    def client_state(self, client: str) -> Row | None:
        """A client's row for authentication, or None when unknown: ``uuid``,
        ``revoked_on``, its active key's ``key_id`` and ``public_key`` (None: no active
        key) and ``keys`` (how many keys it ever had: an enrolled client, 0 for none)."""
        return self.store.one(_CLIENT_STATE, (client,))

    def key(self, key_id: str) -> Row | None:
        """A key row (any status)."""
        return self.store.one("SELECT * FROM client_keys WHERE key_id = ?", (key_id,))

    def keys_of(self, client: str) -> list[Row]:
        """A client's keys, oldest first."""
        sql = "SELECT * FROM client_keys WHERE client = ? ORDER BY created_on, key_id"
        return self.store.all(sql, (client,))

    def enrol(
        self,
        model_id: int,
        client: str | None,
        key_id: str,
        public_key: str,
        admit: Callable[[Connection, str], None],
    ) -> str:
        """Bind ``public_key`` to ``client`` (a new client if None) and register it with
        the model, in one transaction; return the client's UUID.

        Args:
            model_id: The model.
            client: The enrolling client (its CLIENT-UUID), or None for a new one.
            key_id: The key's id.
            public_key: The key (base64 of its raw bytes).
            admit: Called with the transaction's connection and the client's UUID before
                the key is written; it raises the 4xx that refuses the enrolment (a spent
                token, a key not on the allow-list), and writes what it consumes.

        Raises:
            HTTPError: 404 no such model; 409 the key is another client's, or the client
                has another active key (rotate instead); what ``admit`` raises.
        """
        with self.store.transaction() as conn:
            if conn.execute("SELECT id FROM models WHERE id = ?", (model_id,)).fetchone() is None:
                raise not_found()
            owner = conn.execute(
                "SELECT client, status FROM client_keys WHERE key_id = ?", (key_id,)
            ).fetchone()
            if owner is not None and (owner["client"] != client or owner["status"] != ACTIVE):
                raise detail(
                    409,
                    f"Key {key_id} is bound to another client, or was retired: each client "
                    "enrols a key of its own, once. Create a new key (fma-connect keys create).",
                )
            if client is None:
                client = str(uuid_module.uuid4())
                conn.execute(
                    "INSERT INTO clients (uuid, created_on) VALUES (?, ?)", (client, now())
                )
            elif owner is None:
                active = conn.execute(
                    "SELECT key_id FROM client_keys WHERE client = ? AND status = ?",
                    (client, ACTIVE),
                ).fetchone()
                if active is not None:
                    raise detail(
                        409,
                        f"Client {client} is enrolled with key {active['key_id']}, not "
                        f"{key_id}: sign with that key, or rotate to the new one "
                        "(fma-connect keys rotate).",
                    )
            admit(conn, client)
            if owner is None:
                conn.execute(
                    "INSERT INTO client_keys (key_id, client, public_key, status, created_on) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (key_id, client, public_key, ACTIVE, now()),
                )
            conn.execute(
                "INSERT INTO model_clients (federated_model, client) VALUES (?, ?) "
                "ON CONFLICT DO NOTHING",
                (model_id, client),
            )
        return client

    def rotate(self, client: str, old: str, key_id: str, public_key: str) -> None:
        """Make ``key_id`` the client's active key in place of ``old`` (kept, as rotated).

        Raises:
            HTTPError: 409 the new key is bound already (to anyone), or ``old`` is no
                longer the client's active key.
        """
        stamp = now()
        with self.store.transaction() as conn:
            if conn.execute(
                "SELECT key_id FROM client_keys WHERE key_id = ?", (key_id,)
            ).fetchone():
                raise detail(409, f"Key {key_id} is enrolled already; create a new key.")
            retired = conn.execute(
                "UPDATE client_keys SET status = ?, retired_on = ? "
                "WHERE key_id = ? AND client = ? AND status = ?",
                (ROTATED, stamp, old, client, ACTIVE),
            )
            if retired.rowcount != 1:
                raise detail(409, f"Key {old} is no longer client {client}'s active key.")
            conn.execute(
                "INSERT INTO client_keys (key_id, client, public_key, status, created_on) "
                "VALUES (?, ?, ?, ?, ?)",
                (key_id, client, public_key, ACTIVE, stamp),
            )

    def revoke(self, client: str, key_id: str | None) -> list[str]:
        """Revoke one key of a client (``key_id``), or the client itself with all its keys.

        A revoked client is refused on every route; a client whose only active key was
        revoked is refused until it enrols a new key (with a token or an allow-listed key).

        Returns:
            The ids of the keys revoked now.

        Raises:
            HTTPError: 404 no such client, or no such key of it.
        """
        stamp = now()
        with self.store.transaction() as conn:
            if (
                conn.execute("SELECT uuid FROM clients WHERE uuid = ?", (client,)).fetchone()
                is None
            ):
                raise not_found(f"No client {client}.")
            sql = "SELECT key_id FROM client_keys WHERE client = ? AND status <> ?"
            params: tuple[Any, ...] = (client, REVOKED)
            if key_id is not None:
                if (
                    conn.execute(
                        "SELECT key_id FROM client_keys WHERE client = ? AND key_id = ?",
                        (client, key_id),
                    ).fetchone()
                    is None
                ):
                    raise not_found(f"Client {client} has no key {key_id}.")
                sql += " AND key_id = ?"
                params = (*params, key_id)
            ids = [row["key_id"] for row in conn.execute(sql, params).fetchall()]
            conn.executemany(
                "UPDATE client_keys SET status = ?, retired_on = COALESCE(retired_on, ?) "
                "WHERE key_id = ?",
                [(REVOKED, stamp, i) for i in ids],
            )
            if key_id is None:
                conn.execute(
                    "UPDATE clients SET revoked_on = COALESCE(revoked_on, ?) WHERE uuid = ?",
                    (stamp, client),
                )
        return ids

    # -- enrolment tokens and allow-lists --------------------------------------------

    def issue_token(self, model_id: int, expires_in: float | None) -> tuple[str, float | None]:
        """A new one-time enrolment token of the model; return it and when it expires.

        Raises:
            HTTPError: 404, the model is gone.
        """
        token = secrets.token_urlsafe(32)
        expires = None if expires_in is None else self.clock() + expires_in
        with self.store.transaction() as conn:
            if conn.execute("SELECT id FROM models WHERE id = ?", (model_id,)).fetchone() is None:
                raise not_found()
            conn.execute(
                "INSERT INTO enrolment_tokens (token_hash, federated_model, created_on, expires) "
                "VALUES (?, ?, ?, ?)",
                (_token_hash(token), model_id, now(), expires),
            )
        return token, expires

    def spend_token(self, conn: Connection, model_id: int, token: str, client: str) -> None:
        """Spend a token in an enrolment's transaction (see :meth:`enrol`'s ``admit``).

        Raises:
            HTTPError: 403, the token is unknown, of another model, spent or expired.
        """
        row = conn.execute(
            "SELECT federated_model, expires, used_on FROM enrolment_tokens WHERE token_hash = ?",
            (_token_hash(token),),
        ).fetchone()
        problem = None
        if row is None or row["federated_model"] != model_id:
            problem = f"is not an enrolment token of federated model {model_id}"
        elif row["used_on"] is not None:
            problem = f"was used already (on {row['used_on']}): a token enrols one client"
        elif row["expires"] is not None and row["expires"] < self.clock():
            problem = "has expired"
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
        """Take a key off the model's allow-list; return whether it was on it."""
        with self.store.transaction() as conn:
            cursor = conn.execute(
                "DELETE FROM allowed_keys WHERE federated_model = ? AND key_id = ?",
                (model_id, key_id),
            )
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

    # -- nonces and signatures --------------------------------------------------------

    def spend_nonce(self, client: str, nonce: str, timestamp: int) -> bool:
        """Record a signed request's nonce; False when it was seen before (a replay).

        A nonce is kept while its timestamp is acceptable (until ``timestamp`` +
        :data:`WINDOW`), then pruned: after that its timestamp alone refuses it.
        """
        clock = self.clock()
        with self.store.transaction() as conn:
            cursor = conn.execute(
                "INSERT INTO request_nonces (client, nonce, expires) VALUES (?, ?, ?) "
                "ON CONFLICT DO NOTHING",
                (client, nonce, max(float(timestamp), clock) + WINDOW),
            )
            if self._prune_due(clock):
                conn.execute("DELETE FROM request_nonces WHERE expires < ?", (clock,))
            return cursor.rowcount > 0

    def _prune_due(self, clock: float) -> bool:
        with self._prune_lock:
            if clock - self._pruned < _PRUNE_EVERY:
                return False
            self._pruned = clock
            return True

    def record_signature(self, update_id: int, signer: Signer, sha256: str, signature: str) -> None:
        """Store a signed update's digest, signature and key (in its insert's transaction)."""
        with self.store.transaction() as conn:
            conn.execute(
                "INSERT INTO update_signatures (update_id, key_id, sha256, signature, signed_on) "
                "VALUES (?, ?, ?, ?, ?)",
                (update_id, signer.key_id, sha256, signature, now()),
            )


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
