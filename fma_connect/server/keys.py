"""The identity tables of the reference server: client keys, enrolment tokens, allow-lists,
request nonces and update signatures (schema step 5; docs/SECURITY.md).

:class:`Keys` is the one entry point. This module holds the clients' keys (enrolment,
rotation, revocation), update signatures and the sender check made as an update is
stored; :mod:`.enrolment` holds the enrolment tokens and allow-lists, :mod:`.nonces`
the request nonces.

Every read here goes to the database, on every request: a revocation, a key rotated or
a key taken off an allow-list is refused at once by every replica (nothing is cached).
A key row is never deleted: a rotated or revoked key stays to verify the updates it
signed (``status`` says which: ``active``, ``rotated``, ``revoked``; a client has at
most one active key). A model's admission of a client (a token of it spent, an
allow-listed key, an open model's enrolment) is recorded on its registration
(``model_clients.admitted_on``, see :meth:`~.store.Store.is_registered`).
"""

from __future__ import annotations

import threading
import uuid as uuid_module
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .database import Connection
from .deadlines import Clock
from .enrolment import EnrolmentTokens, _invalidate_signed_by
from .errors import detail, forbidden, not_found
from .nonces import RequestNonces, replayed
from .store import Store
from .store_core import INVALID, PENDING, RUNNING, Row, now

__all__ = ["ACTIVE", "REVOKED", "ROTATED", "Keys", "Signer"]

ACTIVE, ROTATED, REVOKED = "active", "rotated", "revoked"
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


class Keys(EnrolmentTokens, RequestNonces):
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

    # -- update signatures ------------------------------------------------------------

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
