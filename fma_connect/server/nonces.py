"""Request nonces of the identity tables: a signed request's nonce is spent once, so a
replayed request is refused (docs/SECURITY.md). Part of :class:`~.keys.Keys`.
"""

from __future__ import annotations

import threading

from .database import Connection
from .deadlines import Clock
from .errors import HTTPError, detail
from .store import Store

__all__ = ["WINDOW", "RequestNonces", "replayed"]

#: Seconds a signed request's timestamp may be off the server's clock, either way.
WINDOW = 300.0
#: Seconds between two prunings of expired nonces by one server.
_PRUNE_EVERY = 60.0


class RequestNonces:
    """The request nonces (a part of :class:`~.keys.Keys`, which sets these attributes)."""

    store: Store
    clock: Clock
    _pruned: float
    _prune_lock: threading.Lock

    def spend_nonce(self, client: str, nonce: str, timestamp: int) -> bool:
        """Record a signed request's nonce; False when it was seen before (a replay).

        A nonce is kept while its timestamp is acceptable (until ``timestamp`` +
        :data:`WINDOW`), then pruned: after that its timestamp alone refuses it.
        """
        with self.store.transaction() as conn:
            return self.spend_nonce_in(conn, client, nonce, timestamp)

    def spend_nonce_in(self, conn: Connection, client: str, nonce: str, timestamp: int) -> bool:
        """:meth:`spend_nonce` in the transaction ``conn`` (an enrolment's, see
        :meth:`~.keys.Keys.enrol`)."""
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


def replayed(nonce: str, status: int) -> HTTPError:
    """The refusal of a signed request whose nonce was seen before."""
    from ..signing import NONCE_HEADER

    return detail(
        status,
        f"{NONCE_HEADER} {nonce} was used before: a replayed request is refused (a client "
        "signs each attempt afresh).",
    )
