"""The identity tables of the reference server: client keys, enrolment tokens, allow-lists,
request nonces and update signatures (schema step 5; docs/SECURITY.md).

Every read here goes to the database, on every request: a revocation, a key rotated or
a key taken off an allow-list is refused at once by every replica (nothing is cached).
A key row is never deleted: a rotated or revoked key stays to verify the updates it
signed (``status`` says which: ``active``, ``rotated``, ``revoked``; a client has at
most one active key). Enrolment tokens are stored as their SHA-256 only (they are 32
random bytes: a stolen database gives no enrolment token; it holds the admin token in
the clear, though, which issues new ones). A model's admission of a client (a token of
it spent, an allow-listed key, an open model's enrolment) is recorded on its
registration (``model_clients.admitted_on``, see :meth:`~.store.Store.is_registered`).
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
from .errors import HTTPError, detail, forbidden, not_found
from .store import INVALID, PENDING, RUNNING, Row, Store, now

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
        nonce: tuple[str, str, int] | None = None,
    ) -> str:
        """Bind ``public_key`` to ``client`` (a new client if None), register it with the
        model and record its admission, in one transaction; return the client's UUID.

        Args:
            model_id: The model.
            client: The enrolling client (its CLIENT-UUID), or None for a new one.
            key_id: The key's id.
            public_key: The key (base64 of its raw bytes).
            admit: Called with the transaction's connection and the client's UUID before
                the key is written; it raises the 4xx that refuses the enrolment (a spent
                token, a key not on the allow-list), and writes what it consumes.
            nonce: The request's ``(client or "", nonce, timestamp)`` (as
                :func:`~.signed.check_request` keeps it), spent here once ``admit`` let
                the enrolment through (a refused one writes nothing, nonce included).

        Raises:
            HTTPError: 404 no such model; 409 the key is another client's, or the client
                has another active key (rotate instead); 403 the nonce was used before;
                what ``admit`` raises.
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
            if nonce is not None and not self.spend_nonce_in(conn, *nonce):
                raise replayed(nonce[1], 403)
            stamp = now()
            if owner is None:
                conn.execute(
                    "INSERT INTO client_keys (key_id, client, public_key, status, created_on) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (key_id, client, public_key, ACTIVE, stamp),
                )
            conn.execute(
                "INSERT INTO model_clients (federated_model, client, admitted_key, admitted_on) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (federated_model, client) DO UPDATE SET "
                "admitted_key = excluded.admitted_key, admitted_on = excluded.admitted_on",
                (model_id, client, key_id, stamp),
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
        revoked is refused until it enrols a new key (with a token bound to it). In the
        same transaction its waiting updates (PENDING, and RUNNING in a round now: that
        round then cannot commit, see :meth:`~.store.Store.record_round`) are marked
        INVALID with the reason: all of a revoked client's, or those signed by the key.

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
                "UPDATE client_keys SET status = ?, retired_on = COALESCE(retired_on, ?), "
                "revoked_on = ? WHERE key_id = ?",
                [(REVOKED, stamp, stamp, i) for i in ids],
            )
            if key_id is None:
                conn.execute(
                    "UPDATE clients SET revoked_on = COALESCE(revoked_on, ?) WHERE uuid = ?",
                    (stamp, client),
                )
                conn.execute(
                    "UPDATE updates SET status = ?, status_reason = ? "
                    "WHERE client = ? AND status IN (?, ?)",
                    (INVALID, f"its client was revoked (on {stamp})", client, PENDING, RUNNING),
                )
            else:
                _invalidate_signed_by(
                    conn, key_id, f"the key that signed it ({key_id}) was revoked (on {stamp})"
                )
        return ids

    # -- enrolment tokens and allow-lists --------------------------------------------

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
        token = secrets.token_urlsafe(32)
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
        """Spend a token in an enrolment's transaction (see :meth:`enrol`'s ``admit``).

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
        and RUNNING: see :meth:`revoke`) are marked INVALID with the reason.
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

    # -- nonces and signatures --------------------------------------------------------

    def spend_nonce(self, client: str, nonce: str, timestamp: int) -> bool:
        """Record a signed request's nonce; False when it was seen before (a replay).

        A nonce is kept while its timestamp is acceptable (until ``timestamp`` +
        :data:`WINDOW`), then pruned: after that its timestamp alone refuses it.
        """
        with self.store.transaction() as conn:
            return self.spend_nonce_in(conn, client, nonce, timestamp)

    def spend_nonce_in(self, conn: Connection, client: str, nonce: str, timestamp: int) -> bool:
        """:meth:`spend_nonce` in the transaction ``conn`` (an enrolment's, see :meth:`enrol`)."""
        clock = self.clock()
        cursor = conn.execute(
            "INSERT INTO request_nonces (client, nonce, expires) VALUES (?, ?, ?) "
            "ON CONFLICT DO NOTHING",
            (client, nonce, max(float(timestamp), clock) + WINDOW),
        )
        if self._prune_due(clock):
            # A window late: replicas' clocks differ, and a nonce must outlive the time
            # any of them (up to WINDOW off this one) still accepts its timestamp.
            conn.execute("DELETE FROM request_nonces WHERE expires < ?", (clock - WINDOW,))
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

    def check_sender(
        self,
        conn: Connection | None,
        model_id: int,
        client: str,
        request_key: str | None,
        update_key: str | None,
    ) -> None:
        """Refuse, in the transaction that stores an update, a sender that lost its right
        since its request was authenticated (its body may arrive long after its headers).

        Args:
            conn: The storing transaction (write transactions are serialized, so no
                revocation commits between this check and the update); None: read now,
                outside one (a held long-poll woken, see ``routes_models``).
            model_id: The update's model.
            client: The sender.
            request_key: The key that signed the request (it must still be the client's
                active key), or None for a client without a key.
            update_key: The key that signed the update (a resumable upload's may have been
                rotated since: it must be the client's and not revoked), or None.

        Raises:
            HTTPError: 401, the client or a key was revoked (or rotated away); 403, the
                client is no longer a member of the model (unregistered, not admitted, or
                its key taken off the allow-list).
        """

        def one(sql: str, params: tuple[Any, ...]) -> Row | None:
            if conn is None:
                return self.store.one(sql, params)
            found: Row | None = conn.execute(sql, params).fetchone()
            return found

        state = one(_CLIENT_STATE, (client,))
        if state is None or state["revoked_on"] is not None:
            when = "" if state is None else f" (on {state['revoked_on']})"
            raise detail(401, f"Client {client} was revoked{when}.")
        if request_key is not None and state["key_id"] != request_key:
            raise detail(
                401,
                f"Key {request_key} that signed the request is no longer client {client}'s "
                f"active key (now {state['key_id']}: rotated or revoked meanwhile).",
            )
        if update_key is not None:
            row = one("SELECT client, status FROM client_keys WHERE key_id = ?", (update_key,))
            if row is None or row["client"] != client or row["status"] == REVOKED:
                raise detail(
                    401,
                    f"Key {update_key} that signed the update is not a key of client "
                    f"{client} that is not revoked.",
                )
        member = (
            self.store.is_registered(model_id, client)
            if conn is None
            else self.store.is_member(conn, model_id, client)
        )
        if not member:
            raise forbidden(
                f"Client {client} is no longer a member of federated model {model_id} (it "
                "was removed, or lacks the enrolment the model requires)."
            )


def replayed(nonce: str, status: int) -> HTTPError:
    """The refusal of a signed request whose nonce was seen before."""
    from ..signing import NONCE_HEADER

    return detail(
        status,
        f"{NONCE_HEADER} {nonce} was used before: a replayed request is refused (a client "
        "signs each attempt afresh).",
    )


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
