"""Round deadlines coming due: :class:`Deadlines` calls back when a model's time is up.

A model with a ``round_deadline`` whose round is waiting for updates is asked again at
its deadline, without a new update to prompt it (see :mod:`.policies`). The times come
from a clock the server is given (``time.time`` unless a test controls it); one thread
waits for the earliest, at most a second at a time, so a clock moved by a test is seen
within a second.
"""

from __future__ import annotations

import heapq
import logging
import threading
from collections.abc import Callable

__all__ = ["Clock", "Deadlines"]

#: Seconds since the epoch, now.
Clock = Callable[[], float]
_LONGEST_WAIT = 1.0
log = logging.getLogger("fma_connect.server")


class Deadlines:
    """Calls ``due(model_id)`` in its own thread once ``clock()`` reaches a scheduled time.

    Args:
        clock: The time now.
        due: Called for a model whose scheduled time came; it decides again (and may
            schedule a later time).
    """

    def __init__(self, clock: Clock, due: Callable[[int], None]) -> None:
        self._clock, self._due = clock, due
        self._heap: list[tuple[float, int]] = []
        self._next: dict[int, float] = {}  # model -> its earliest time in the heap
        self._wake = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="fma-round-deadlines", daemon=True)
        self._thread.start()

    def schedule(self, model_id: int, at: float) -> None:
        """Call back for ``model_id`` at time ``at``, unless it is called back as soon.

        Every update of a waiting round schedules its deadline: a model has one time
        in the heap, its earliest (the callback schedules a later one if needed).
        """
        with self._wake:
            if self._next.get(model_id, float("inf")) <= at:
                return
            self._next[model_id] = at
            heapq.heappush(self._heap, (at, model_id))
            self._wake.notify()

    def close(self) -> None:
        """Stop the thread; times not come yet are dropped (a restart schedules them anew)."""
        with self._wake:
            self._closing = True
            self._wake.notify()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._closing:
                    now = self._clock()
                    if self._heap and self._heap[0][0] <= now:
                        break
                    wait = self._heap[0][0] - now if self._heap else _LONGEST_WAIT
                    self._wake.wait(min(wait, _LONGEST_WAIT))
                if self._closing:
                    return
                at, model_id = heapq.heappop(self._heap)
                if self._next.get(model_id) != at:
                    continue  # replaced by an earlier time, which came already
                del self._next[model_id]
            try:
                self._due(model_id)
            except Exception:  # a failed check must not stop every later deadline
                log.exception("the deadline check of model %s failed", model_id)
