"""Which server runs a model's round now: a lease in the database, renewed while it runs.

Replicas sharing one database (docs/SCALING.md) may all see a model's requirement met at
once; its round must run exactly once. A round runs only under the model's lease, a row of
``round_leases`` (holder, expiry) taken in a write transaction, which no two replicas run
at once (see :mod:`.database`):

* free, or held by this server: taken;
* held by another whose expiry passed (it died, or hangs): taken over, and in the same
  transaction the model's RUNNING updates (that holder's round) are PENDING again, to be
  averaged by the taker's round, so nothing is lost or counted twice;
* held by another, alive: the caller waits and tries again.

While a round runs, a timer thread renews the lease every third of its duration. A round
commits its result only while it still holds the lease (:meth:`RoundLeases.fence`, called
inside the commit's transaction): a holder that stalled past its expiry and was taken
over finds out there and gives up, so two rounds never both commit the same updates.

Every server also runs a watcher (:meth:`RoundLeases.expired`, polled by
:class:`~.rounds.Rounds`) that takes over the leases whose holders died, so a round cut
short by a crash is completed by another replica even if no update arrives to trigger it.

Expiry uses each server's clock (``time.time``): replicas' clocks must agree to within a
small part of the lease's duration (30 s by default), as NTP keeps them.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from .database import Connection
from .errors import HTTPError, not_found
from .store import Store
from .store_core import PENDING, RUNNING

__all__ = ["DEFAULT_LEASE", "LeaseLost", "RoundLeases"]

#: Seconds a round's lease lasts without renewal (``fma-connect serve --round-lease``).
DEFAULT_LEASE = 30.0
#: Longest wait between two tries to take a lease another server holds.
_MAX_POLL = 0.5


class LeaseLost(HTTPError):
    """This server's lease on a model's round was taken over (it stalled past its
    expiry); the round's result is not committed."""

    def __init__(self, model_id: int) -> None:
        message = (
            f"The round of federated model {model_id} was taken over by another server "
            "(this one stalled past its lease); that server completes it."
        )
        super().__init__(409, {"detail": message})


class RoundLeases:
    """The round leases one server takes, renews and releases.

    A lease names a server, not a thread: its callers hold the model's lock of their
    server (:class:`~.rounds.Rounds` does) so that one of its threads never takes or
    releases the lease another of its threads holds.

    Args:
        store: The server's database.
        duration: Seconds a lease lasts unless renewed.

    Attributes:
        holder: This server's name in leases (random, new each start).
    """

    def __init__(self, store: Store, duration: float = DEFAULT_LEASE) -> None:
        if not duration > 0:
            raise ValueError(f"the round lease must last more than 0 seconds, not {duration}")
        self.store = store
        self.duration = duration
        self.holder = secrets.token_hex(8)

    def try_take(self, model_id: int) -> bool:
        """Take the model's lease if it is free, this server's, or expired.

        Raises:
            HTTPError: 404, the model is gone.
        """
        now = time.time()
        with self.store.transaction() as conn:
            if conn.execute("SELECT id FROM models WHERE id = ?", (model_id,)).fetchone() is None:
                raise not_found()
            row = conn.execute(
                "SELECT holder, expires FROM round_leases WHERE federated_model = ?", (model_id,)
            ).fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO round_leases (federated_model, holder, expires) VALUES (?, ?, ?)",
                    (model_id, self.holder, now + self.duration),
                )
                return True
            if row["holder"] != self.holder and row["expires"] >= now:
                return False
            if row["holder"] != self.holder:  # its holder died mid-round: its updates wait
                conn.execute(
                    "UPDATE updates SET status = ? WHERE federated_model = ? AND status = ?",
                    (PENDING, model_id, RUNNING),
                )
            conn.execute(
                "UPDATE round_leases SET holder = ?, expires = ? WHERE federated_model = ?",
                (self.holder, now + self.duration, model_id),
            )
            return True

    def take(self, model_id: int) -> None:
        """Take the model's lease, waiting while another live server holds it.

        Raises:
            HTTPError: 404, the model is gone.
        """
        pause = 0.02
        while not self.try_take(model_id):
            time.sleep(pause)
            pause = min(pause * 2, _MAX_POLL)

    def renew(self, model_id: int) -> bool:
        """Extend this server's lease; return whether it still held it."""
        with self.store.transaction() as conn:
            cursor = conn.execute(
                "UPDATE round_leases SET expires = ? WHERE federated_model = ? AND holder = ?",
                (time.time() + self.duration, model_id, self.holder),
            )
            return cursor.rowcount > 0

    def release(self, model_id: int) -> None:
        """Give the lease up (if this server still holds it)."""
        with self.store.transaction() as conn:
            conn.execute(
                "DELETE FROM round_leases WHERE federated_model = ? AND holder = ?",
                (model_id, self.holder),
            )

    @contextmanager
    def hold(self, model_id: int) -> Iterator[None]:
        """Hold the model's lease for the block, renewing it in a timer thread."""
        self.take(model_id)
        stop = threading.Event()

        def renew() -> None:
            while not stop.wait(self.duration / 3):
                if not self.renew(model_id):
                    return  # taken over: the fence refuses this round's commit

        renewer = threading.Thread(target=renew, name="fma-round-lease", daemon=True)
        renewer.start()
        try:
            yield
        finally:
            stop.set()
            renewer.join()
            self.release(model_id)

    def fence(self, conn: Connection, model_id: int) -> None:
        """Inside a round's commit: raise :class:`LeaseLost` unless this server holds the
        model's lease (no other took it over)."""
        row = conn.execute(
            "SELECT holder FROM round_leases WHERE federated_model = ?", (model_id,)
        ).fetchone()
        if row is None or row["holder"] != self.holder:
            raise LeaseLost(model_id)

    def put_back(self, model_id: int, ids: list[int]) -> None:
        """After a failed round: its RUNNING updates are PENDING again, unless the lease
        was taken over (the taker has them now)."""
        with self.store.transaction() as conn:
            try:
                self.fence(conn, model_id)
            except LeaseLost:
                return
            conn.executemany(
                "UPDATE updates SET status = ? WHERE id = ? AND status = ?",
                [(PENDING, i, RUNNING) for i in ids],
            )

    def expired(self) -> list[int]:
        """Models whose lease another server holds past its expiry (it died mid-round)."""
        rows = self.store.all(
            "SELECT federated_model FROM round_leases WHERE expires < ? AND holder <> ?",
            (time.time(), self.holder),
        )
        return [row["federated_model"] for row in rows]

    def clear(self) -> int:
        """Drop every lease (at the start of a server that owns its database alone: they
        are a dead process's); return how many there were."""
        with self.store.transaction() as conn:
            return conn.execute("DELETE FROM round_leases").rowcount
