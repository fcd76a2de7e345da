"""The core under :class:`~.rounds.Rounds`: what its parts share.

The attributes every part reads (set when a :class:`~.rounds.Rounds` is made, see
:mod:`.rounds`), a model's state as a round sees it (the model, its PENDING updates and
its clients), and whether an automatic round of it runs now (its requirement and round
policy, see :mod:`.policies`): asked before a round takes the lease, again under it, and
once more when the round refused some updates (see :mod:`.rounds_running`).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Literal

from ..registry import AggregatorRegistry, CodecRegistry
from .blobs import BlobStore
from .deadlines import Clock, Deadlines
from .errors import not_found
from .leases import RoundLeases
from .limits import PausePoint
from .locks import KeyedLocks
from .policies import Decision, RoundPolicy, decide, epoch
from .store import Store
from .store_core import Row

__all__ = ["AutoAggregate", "RoundsCore"]

AutoAggregate = Literal["sync", "background", "off"]


class RoundsCore:
    """The state of :class:`~.rounds.Rounds` that its parts share.

    See :class:`~.rounds.Rounds` for the arguments; its ``__init__`` sets these.
    """

    store: Store
    blobs: BlobStore
    registry: CodecRegistry
    aggregators: AggregatorRegistry
    auto_aggregate: AutoAggregate
    leases: RoundLeases
    _pause: PausePoint
    _stored: Callable[[int], None]
    _model_locks: KeyedLocks
    _queue: queue.Queue[int | None]
    _clock: Clock
    _deadlines: Deadlines | None
    _closing: threading.Event

    def _state(self, model_id: int) -> tuple[Row, list[Row], list[str]]:
        """The model, its PENDING updates and its clients.

        Raises:
            HTTPError: 404, no such model.
        """
        model = self.store.get_model(model_id)
        if model is None:
            raise not_found()
        return model, self.store.pending_updates(model_id), self.store.model_clients(model_id)

    def _decide(self, model: Row, pending: list[Row], clients: list[str]) -> Decision:
        """Whether an automatic round of the model runs now, given its PENDING updates;
        a deadline still to come is scheduled."""
        if not model["allow_aggregation"]:
            return Decision(False, why="aggregation is disabled")
        policy = RoundPolicy.of(model)
        registered = set(clients)
        arrived = [
            (u["client"], epoch(u["created_on"])) for u in pending if u["client"] in registered
        ]
        missed = {} if policy.drop_after_missed is None else self.store.missed_rounds(model["id"])
        decision = decide(
            model["requirement"],
            model["requirement_args"],
            policy,
            clients,
            arrived,
            missed,
            self._clock(),
        )
        if decision.wake_at is not None and self._deadlines is not None:
            self._deadlines.schedule(model["id"], decision.wake_at)
        return decision
