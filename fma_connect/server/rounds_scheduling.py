"""When rounds run (a part of :class:`~.rounds.Rounds`): after an update (now, or in the
background worker), at a model's round deadline, on the admin's trigger, and, with a
shared database, when another replica died mid-round (the watcher takes its lease over,
and wakes the requests waiting for an aggregate another replica stored).
"""

from __future__ import annotations

import logging

from .errors import HTTPError, bad_request, not_found
from .policies import epoch
from .rounds_running import RoundRunning
from .store_core import PENDING, Row

__all__ = ["RoundScheduling"]

log = logging.getLogger("fma_connect.server")


class RoundScheduling(RoundRunning):
    """When rounds run (a part of :class:`~.rounds.Rounds`)."""

    def _watch(self) -> None:
        """With a shared database: take over the rounds of replicas that died mid-round,
        and wake this server's held requests when another replica stores an aggregate."""
        seen: int | None = None  # the newest aggregate id seen
        interval = min(1.0, self.leases.duration / 4)
        while not self._closing.wait(interval):
            try:
                for model_id in self.leases.expired():
                    log.warning(
                        "taking over the round of model %s from a replica that stopped", model_id
                    )
                    self._take_over(model_id)
                row = self.store.one("SELECT MAX(id) AS id FROM aggregates")  # the key's end
                newest = int(row["id"] or 0) if row else 0
                if seen is not None and newest > seen:
                    for found in self.store.all(
                        "SELECT DISTINCT federated_model FROM aggregates WHERE id > ?", (seen,)
                    ):
                        self._stored(found["federated_model"])
                seen = newest
                self._schedule_waiting()  # deadlines of rounds whose updates others stored
            except Exception:  # the database is away for a moment: try again next time
                log.warning("the rounds watcher could not read the database", exc_info=True)

    def _take_over(self, model_id: int) -> None:
        """Take an expired lease (its round's updates are PENDING again in the same
        transaction), then run the round the dead replica did not finish, if automatic
        rounds are on."""
        # Under the model's lock, as every use of a lease in this server: a round of this
        # server holding it meanwhile is never mistaken for the dead one's.
        with self._model_locks.hold(model_id):
            try:
                if not self.leases.try_take(model_id):
                    return  # another replica was quicker
            except HTTPError:
                return  # the model is gone
            self.leases.release(model_id)
        if self.auto_aggregate != "off":
            self._auto_round(model_id)

    def wait_idle(self) -> None:
        """Block until the background worker has run every queued round."""
        self._queue.join()

    def after_update(self, model_id: int) -> bool:
        """A new update of the model was stored: run a round now, queue one, or neither.

        Returns:
            Whether a round ran now (so the update's status may have changed).
        """
        if self.auto_aggregate == "sync":
            self._auto_round(model_id)
            return True
        if self.auto_aggregate == "background":
            self._queue.put(model_id)
        return False

    def aggregate(self, model_id: int) -> Row:
        """Run a round now (admin trigger); return the new aggregate.

        Raises:
            HTTPError: 404 no such model; 400 aggregation disabled, nothing pending, or no
                valid update (those are then INVALID, with their reasons).
        """
        model = self.store.get_model(model_id)
        if model is None:
            raise not_found()
        if not model["allow_aggregation"]:
            raise bad_request(
                "non_field_errors", f"Aggregation is disabled for federated model {model_id}."
            )
        aggregate = self._round(model_id, auto=False)
        assert aggregate is not None
        return aggregate

    def _auto_round(self, model_id: int) -> None:
        try:
            self._round(model_id, auto=True)
        except HTTPError as exc:
            log.info("automatic round of model %s made no aggregate: %s", model_id, exc.body)
        except Exception:
            log.exception("automatic round of model %s failed", model_id)

    def _work(self) -> None:
        while True:
            model_id = self._queue.get()
            try:
                if model_id is None:
                    return
                self._auto_round(model_id)
            finally:
                self._queue.task_done()

    def _schedule_waiting(self) -> None:
        """Schedule the deadline of every model with a deadline whose round has updates
        (at start, and on a shared database for the updates other replicas stored)."""
        if self._deadlines is None:
            return
        sql = (
            "SELECT m.id, m.round_deadline, MIN(u.created_on) AS first FROM models m "
            "JOIN updates u ON u.federated_model = m.id AND u.status = ? "
            "WHERE m.round_deadline IS NOT NULL GROUP BY m.id, m.round_deadline"
        )
        for row in self.store.all(sql, (PENDING,)):
            self._deadlines.schedule(row["id"], epoch(row["first"]) + row["round_deadline"])

    def _deadline_came(self, model_id: int) -> None:
        """A model's round deadline came: run its round if the policy says so now."""
        if self.auto_aggregate == "background":
            self._queue.put(model_id)
        else:
            self._auto_round(model_id)
