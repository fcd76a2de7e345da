"""How long and how many: the reference server's bounds on slow, stalled or numerous clients.

What each bound means does not depend on the ASGI server; enforcing it partly does:

* :class:`Bounds` holds the settings (``create_app`` keeps them in ``app.state.bounds``);
* :class:`BodyGuard`, ASGI middleware (any asyncio server), bounds the silence of a request
  body: a client that sends no byte of its body for ``idle_timeout`` seconds gets a 408
  JSON answer and the connection is closed (the spooled part is deleted by the route);
* :class:`ConnectionLimiter`, :func:`refusal` and :func:`error_response` are the pieces
  a connection-level adapter needs: counting connections, the 503 answer past a cap, and
  the JSON answer to malformed HTTP written straight to the socket.

The connection-level bounds (request head timeout, send stalls, connection caps,
malformed HTTP in JSON) need hooks inside the HTTP server. :mod:`.protocol` provides them
for uvicorn's httptools protocol; a server that replaces uvicorn must provide the same:

* ``header_timeout``: a request head (request line and headers) must arrive whole
  within this many seconds of the connection opening or of the previous response
  ending; a partial head gets 408, a connection that sent nothing is closed silently;
* ``idle_timeout``: silence, not total time: a response the client reads nothing of
  for this long is aborted (its buffers dropped), as is the unread rest of the body
  of a request already answered when it stops arriving;
* ``max_connections``: connections past this many are answered 503 with
  ``Retry-After`` and closed, without reaching the app;
* ``max_connections_per_client``: the same cap per client address (0: none; behind a
  reverse proxy every connection comes from the proxy's address);
* ``max_header_bytes``: a larger request head is answered 431.
"""

from __future__ import annotations

import asyncio
import http
import logging
import sys
import time
from dataclasses import dataclass, field

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "DEFAULT_HEADER_TIMEOUT",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_MAX_CONNECTIONS_PER_CLIENT",
    "DEFAULT_MAX_HEADER_BYTES",
    "RETRY_AFTER",
    "BodyGuard",
    "BodyProgress",
    "BodyStalled",
    "Bounds",
    "ConnectionLimiter",
    "default_max_connections",
    "error_response",
    "refusal",
]

#: Seconds a request head may take to arrive whole (nginx's and Apache's are 20-60 s).
DEFAULT_HEADER_TIMEOUT = 30.0
#: Seconds of silence allowed while a body moves, either way (nginx's default, 60 s).
DEFAULT_IDLE_TIMEOUT = 60.0
#: Connections one client address may hold at once (a WebClient holds one or two).
DEFAULT_MAX_CONNECTIONS_PER_CLIENT = 64
#: Largest request head (h11's default, kept from when the server ran on h11): more gets 431.
DEFAULT_MAX_HEADER_BYTES = 16 << 10
#: Seconds a refused client is told to wait (``Retry-After``).
RETRY_AFTER = 2
#: Descriptors kept for the database, logs and the listening socket.
_RESERVED_FILES = 64
_MOST_CONNECTIONS = 1024
_PROGRESS_KEY = "fma_connect.body"

log = logging.getLogger("fma_connect.server")


def default_max_connections() -> int:
    """Half the open-file limit less 64, at most 1024 (480 under the usual limit of 1024).

    A connection can hold two descriptors at once (its socket, and the blob it streams or
    the spool file of its upload); the reserve keeps the database and logs working when
    every connection is busy.
    """
    if sys.platform == "win32":  # no RLIMIT_NOFILE there
        return _MOST_CONNECTIONS
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return _MOST_CONNECTIONS
    return max(1, min(_MOST_CONNECTIONS, (soft - _RESERVED_FILES) // 2))


@dataclass(frozen=True)
class Bounds:
    """The server's bounds on clients; see the module for what each means.

    Raises:
        ValueError: a timeout that is not positive, or a count below its minimum.
    """

    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    max_connections: int = field(default_factory=default_max_connections)
    max_connections_per_client: int = DEFAULT_MAX_CONNECTIONS_PER_CLIENT
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES

    def __post_init__(self) -> None:
        for name in ("header_timeout", "idle_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be a positive number of seconds")
        if self.max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        if self.max_connections_per_client < 0:
            raise ValueError("max_connections_per_client must be 0 (no cap) or more")
        if self.max_header_bytes < 1024:
            raise ValueError("max_header_bytes must be at least 1024")


class ConnectionLimiter:
    """Counts open connections, in total and per client address (one event loop only)."""

    def __init__(self, total: int, per_client: int) -> None:
        self.total = total
        self.per_client = per_client
        self.open = 0
        self._by_client: dict[str, int] = {}
        self._refused = 0
        self._warned = -float("inf")

    def admit(self, client: str) -> str | None:
        """Count a new connection from ``client``; return why it is refused (None: admitted).

        A refused connection is not counted; a refusal is logged as a warning at most
        every 10 s, with the number refused since the last one.
        """
        held = self._by_client.get(client, 0)
        if self.open >= self.total:
            reason = f"the server holds {self.open} connections, its limit"
        elif self.per_client and held >= self.per_client:
            reason = f"{client} holds {held} connections, the limit per client"
        else:
            self.open += 1
            self._by_client[client] = held + 1
            return None
        self._refused += 1
        now = time.monotonic()
        if now - self._warned >= 10:
            log.warning("connections refused (503): %d, the last because %s", self._refused, reason)
            self._warned, self._refused = now, 0
        return reason

    def release(self, client: str) -> None:
        """Forget a connection :meth:`admit` counted."""
        self.open -= 1
        left = self._by_client.get(client, 1) - 1
        if left:
            self._by_client[client] = left
        else:
            self._by_client.pop(client, None)


def error_response(status: int, detail: str, *, retry_after: int | None = None) -> bytes:
    """A whole HTTP/1.1 answer ``{"detail": detail}`` that closes the connection.

    For errors found below the app (malformed HTTP, a head too slow to arrive), which
    are written straight to the socket.
    """
    body = orjson.dumps({"detail": detail})
    lines = [
        f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        "connection: close",
    ]
    if retry_after is not None:
        lines.append(f"retry-after: {retry_after}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def refusal(reason: str) -> ASGIApp:
    """An ASGI app answering every request 503 ``{"detail"}`` with ``Retry-After``, closing."""
    body = orjson.dumps({"detail": f"Too many connections: {reason}. Retry in {RETRY_AFTER} s."})
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(RETRY_AFTER).encode()),
        (b"connection", b"close"),
    ]

    async def refuse(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return refuse


class BodyStalled(Exception):
    """Raised into the app when a request body sent no byte for ``idle_timeout`` seconds.

    ``create_app`` answers it 408 and closes the connection.
    """

    def __init__(self, seconds: float, received: int) -> None:
        super().__init__(
            f"No byte of the request body arrived for {seconds:g} s "
            f"({received} bytes had arrived); send it again."
        )
        self.seconds = seconds
        self.received = received


@dataclass
class BodyProgress:
    """How much of a request's body arrived (kept in its ASGI scope by :class:`BodyGuard`)."""

    received: int = 0
    complete: bool = False
    answered: bool = False

    @staticmethod
    def of(scope: Scope) -> BodyProgress | None:
        """The progress :class:`BodyGuard` keeps for the request of ``scope`` (None: none)."""
        found = scope.get(_PROGRESS_KEY)
        return found if isinstance(found, BodyProgress) else None


class BodyGuard:
    """ASGI middleware: a request body silent for ``idle_timeout`` s raises :exc:`BodyStalled`.

    The wait is timed only while the app asks for body bytes that have not come: a
    slow app pauses the client (the server stops reading), which is not the client's
    silence; and once the body is whole or the answer has started, a wait (for a
    disconnect, while a response streams) is not timed at all.
    """

    def __init__(self, app: ASGIApp, idle_timeout: float) -> None:
        self.app = app
        self.idle_timeout = idle_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app with a timed ``receive``."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        progress = scope[_PROGRESS_KEY] = BodyProgress()
        idle = self.idle_timeout

        async def timed_receive() -> Message:
            if progress.complete or progress.answered:
                return await receive()
            try:
                async with asyncio.timeout(idle):
                    message = await receive()
            except TimeoutError:
                raise BodyStalled(idle, progress.received) from None
            if message["type"] == "http.request":
                progress.received += len(message.get("body", b""))
                progress.complete = not message.get("more_body", False)
            else:
                progress.complete = True
            return message

        async def noting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                progress.answered = True
            await send(message)

        await self.app(scope, timed_receive, noting_send)
