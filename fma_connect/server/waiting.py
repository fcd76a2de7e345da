"""Long polls of ``get_latest_aggregate``: requests held until a newer aggregate exists.

A held request waits on its model's :class:`asyncio.Event`, never polling the store.
Rounds store aggregates in worker threads and call :meth:`Waiters.notify`, which wakes
the model's waiters on the event loop's thread. The event is taken before the store is
read, so an aggregate stored between that read and the wait still wakes it.

Held requests are bounded per client (429) and in all (503), so they cannot take
every connection of the server; both answers carry ``Retry-After``. See docs/ROUNDS.md.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from starlette.requests import ClientDisconnect

from .bounds import RETRY_AFTER
from .errors import HTTPError
from .store_core import Row

__all__ = ["DEFAULT_HELD_PER_CLIENT", "LONG_POLL_CAP", "Waiters"]

#: Most seconds a request is held, whatever its ``wait`` asks (sent as ``FMA-Long-Poll``).
LONG_POLL_CAP = 30
#: Most requests one client may have held at once.
DEFAULT_HELD_PER_CLIENT = 4


class Waiters:
    """The held requests of one server, and the wake-ups of their models.

    Args:
        total: Most requests held at once, of all clients.
        per_client: Most requests held at once per client.

    Attributes:
        held: How many requests are held now.
    """

    def __init__(self, total: int, per_client: int = DEFAULT_HELD_PER_CLIENT) -> None:
        self.total = total
        self.per_client = per_client
        self.held = 0
        self._by_client: dict[str, int] = {}
        self._events: dict[int, asyncio.Event] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def notify(self, model_id: int) -> None:
        """A new aggregate of the model is stored: wake its held requests (any thread)."""
        loop = self._loop
        if loop is None:  # nothing was ever held
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: the server is stopping
            loop.call_soon_threadsafe(self._wake, model_id)

    async def hold(
        self,
        client: str,
        model_id: int,
        after: int,
        seconds: float,
        latest: Callable[[], Awaitable[Row | None]],
        gone: Callable[[], Awaitable[None]],
    ) -> Row | None:
        """Wait until the model has an aggregate newer than ``after``, at most ``seconds``.

        Args:
            client: Who holds the request (the bounds count per client).
            model_id: The model whose aggregates are awaited.
            after: The aggregate id the answer must exceed (-1: any aggregate).
            seconds: Most seconds to hold the request.
            latest: Reads the model's latest aggregate from the store (None: none yet).
            gone: Returns when the client disconnects.

        Returns:
            The latest aggregate when it is newer than ``after`` or the time is up
            (None: the model has none).

        Raises:
            HTTPError: 429, the client holds too many requests; 503, the server does.
            ClientDisconnect: the client went away while its request was held.
        """
        self._admit(client)
        loop = self._loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        disconnect = asyncio.ensure_future(gone())
        try:
            while True:
                event = self._events.setdefault(model_id, asyncio.Event())
                found = await latest()
                remaining = deadline - loop.time()
                if (found is not None and found["id"] > after) or remaining <= 0:
                    return found
                woken = asyncio.ensure_future(event.wait())
                await asyncio.wait(
                    (woken, disconnect), timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                )
                woken.cancel()
                if disconnect.done():
                    raise ClientDisconnect()
        finally:
            disconnect.cancel()
            self._release(client)

    def _admit(self, client: str) -> None:
        held = self._by_client.get(client, 0)
        if held >= self.per_client:
            raise _refused(
                429,
                f"This client already has {held} requests held waiting for aggregates, the "
                f"most one client may; wait for one of them to return first.",
            )
        if self.held >= self.total:
            raise _refused(
                503,
                f"The server already holds {self.held} requests waiting for aggregates, its "
                f"limit; retry in {RETRY_AFTER} s.",
            )
        self.held += 1
        self._by_client[client] = held + 1

    def _release(self, client: str) -> None:
        self.held -= 1
        left = self._by_client[client] - 1
        if left:
            self._by_client[client] = left
        else:
            del self._by_client[client]

    def _wake(self, model_id: int) -> None:
        event = self._events.pop(model_id, None)
        if event is not None:
            event.set()


def _refused(status: int, message: str) -> HTTPError:
    return HTTPError(status, {"detail": message}, {"Retry-After": str(RETRY_AFTER)})
