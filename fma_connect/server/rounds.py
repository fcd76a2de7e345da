"""Aggregation rounds of the reference server: when they run and what they record.

Rounds of one model never overlap, in one server (a lock per model) nor across replicas
sharing a database (the model's lease, see :mod:`.leases`: a replica that dies mid-round
leaves it to another, which finds its updates PENDING again). A round takes the model's
PENDING updates, marks them RUNNING, averages them one at a time from their
memory-mapped blobs, and commits the aggregate and every update's final status
(COMPLETE, or INVALID with its reason) in one transaction. If it fails, the updates
are PENDING again.

:class:`Rounds` is the one entry point, made and closed here; its parts hold the code,
each building on the ones it calls: :mod:`.rounds_core` (the state they share, a model's
state as a round sees it, and whether an automatic round runs now),
:mod:`.rounds_results` (what a round writes: its aggregate, digest and aggregator
state), :mod:`.rounds_running` (running a round) and :mod:`.rounds_scheduling` (when
rounds run: after updates, at deadlines, on the admin's trigger, and taking over the
rounds of replicas that died).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable

from ..plugins import default_aggregator_registry
from ..registry import AggregatorRegistry, CodecRegistry
from .blobs import BlobStore
from .deadlines import Clock, Deadlines
from .leases import DEFAULT_LEASE, RoundLeases
from .limits import PausePoint
from .locks import KeyedLocks
from .rounds_core import AutoAggregate
from .rounds_results import Result
from .rounds_scheduling import RoundScheduling
from .store import Store

__all__ = ["AutoAggregate", "Result", "Rounds"]


class Rounds(RoundScheduling):
    """Runs the aggregation rounds of every model of one server.

    Args:
        store: The server's metadata.
        blobs: The server's payload files.
        registry: The codecs stored updates may use.
        auto_aggregate: Run a round when a model's requirement is met after an update:
            in the request (``sync``, deterministic), in a worker thread
            (``background``), or never (``off``: admin trigger only).
        pause: The crash tests' pause point.
        stored: Called with the model's id after a round stored an aggregate (it wakes
            the requests waiting for one, see :mod:`.waiting`).
        aggregators: The aggregators models may name; default: every installed one
            (:func:`~fma_connect.plugins.default_aggregator_registry`).
        lease: Seconds a round's lease lasts unless renewed (see :mod:`.leases`): how
            long after a replica died mid-round another takes the round over.
        clock: The time now, for round deadlines (see :mod:`.policies`).
    """

    def __init__(
        self,
        store: Store,
        blobs: BlobStore,
        registry: CodecRegistry,
        *,
        auto_aggregate: AutoAggregate,
        pause: PausePoint,
        stored: Callable[[int], None],
        aggregators: AggregatorRegistry | None = None,
        lease: float = DEFAULT_LEASE,
        clock: Clock = time.time,
    ) -> None:
        self.aggregators = default_aggregator_registry() if aggregators is None else aggregators
        self.store = store
        self.blobs = blobs
        self.registry = registry
        self.auto_aggregate = auto_aggregate
        self._pause = pause
        self._stored = stored
        self._model_locks = KeyedLocks()
        self.leases = RoundLeases(store, lease)
        store.round_fence = self.leases.fence
        if not store.db.shared:  # the database is this server's alone: leases are a dead one's
            self.leases.clear()
        self._queue: queue.Queue[int | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        if auto_aggregate == "background":
            self._worker = threading.Thread(target=self._work, name="fma-aggregation", daemon=True)
            self._worker.start()
        self._clock = clock
        self._deadlines: Deadlines | None = None
        if auto_aggregate != "off":
            self._deadlines = Deadlines(clock, self._deadline_came)
            self._schedule_waiting()
        self._closing = threading.Event()
        self._watcher: threading.Thread | None = None
        if store.db.shared:
            self._watcher = threading.Thread(
                target=self._watch, name="fma-rounds-watch", daemon=True
            )
            self._watcher.start()

    def close(self) -> None:
        """Stop the background worker (after the rounds already queued) and the watcher."""
        self._closing.set()
        if self._watcher is not None:
            self._watcher.join()
            self._watcher = None
        if self._deadlines is not None:
            self._deadlines.close()
            self._deadlines = None
        if self._worker is not None:
            self._queue.put(None)
            self._worker.join()
            self._worker = None
