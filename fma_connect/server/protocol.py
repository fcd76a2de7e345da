"""The HTTP/1.1 connections of the reference server: uvicorn's h11 protocol, bounded.

uvicorn (0.54, h11) leaves these open: no timeout on a request head (a connection that
sends nothing is kept for good), none on sending (a client that stops reading pins the
response's buffers for as long as it stays connected, and closing such a connection
waits for a flush that never comes), connections counted only once their request has
arrived (``limit_concurrency``, answered in text/plain), and malformed HTTP answered in
text/plain with the status dropped (a head too large gets 400, not 431).

:class:`BoundedProtocol` adds the connection-level bounds of :mod:`.bounds`, and
:func:`server_config` builds the uvicorn config that runs an app with them. Nothing else
in the server knows about uvicorn's internals, so replacing the HTTP server means
replacing this module (``serve`` and ``testing`` call :func:`server_config` only).

Each connection has one watch timer, firing every ``min(header, idle timeout) / 8``
seconds (between 10 ms and 1 s), that checks, depending on where the connection is:

* waiting for a request head: the time since the connection opened or the previous
  response (and its request's body) ended, against ``header_timeout``;
* an answered request whose body still arrives (uvicorn reads and drops it): the
  silence since its last byte, against ``idle_timeout``;
* always: the response bytes buffered for the client. While they do not shrink (the
  client reads nothing) for ``idle_timeout``, the connection is aborted, which drops
  them; a slow reader that takes any of them keeps its connection.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from typing import Any, ClassVar

import h11
import uvicorn
from starlette.applications import Starlette
from uvicorn.config import LOG_LEVELS, LOGGING_CONFIG, Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from .bounds import Bounds, ConnectionLimiter, error_response, refusal

__all__ = ["BoundedProtocol", "server_config"]

#: Seconds a refused connection may take to send its head (it is answered 503 at once).
_REFUSED_HEAD_TIMEOUT = 1.0
log = logging.getLogger("fma_connect.server")


class _Connection(h11.Connection):
    """h11's connection, refusing large heads and keeping its last protocol error.

    h11 bounds only a head still incomplete (``max_incomplete_event_size``): one that
    arrives whole in a single read passes whatever its size, so its size is checked here.
    uvicorn keeps only a message of the error, not its status.
    """

    error: h11.RemoteProtocolError | None = None

    def __init__(self, max_head_bytes: int) -> None:
        super().__init__(h11.SERVER, max_head_bytes)
        self.max_head_bytes = max_head_bytes

    def next_event(self) -> Any:
        """h11's next event; a protocol error is kept in :attr:`error`, then raised."""
        try:
            event = super().next_event()
            if isinstance(event, h11.Request) and _head_size(event) > self.max_head_bytes:
                raise h11.RemoteProtocolError("request head too large", error_status_hint=431)
        except h11.RemoteProtocolError as exc:
            self.error = exc
            raise
        return event


def _head_size(request: h11.Request) -> int:
    """About the bytes of a request's head (h11 drops the whitespace it trimmed)."""
    size = len(request.method) + len(request.target) + 12
    return size + sum(len(name) + len(value) + 4 for name, value in request.headers.raw_items())


class BoundedProtocol(H11Protocol):
    """uvicorn's h11 protocol with the bounds of :mod:`.bounds` (see the module).

    Use a subclass made by :func:`server_config`, which sets :attr:`bounds` and gives
    the server its own :attr:`limiter`.
    """

    bounds: ClassVar[Bounds]
    limiter: ClassVar[ConnectionLimiter]

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._h11 = _Connection(self.bounds.max_header_bytes)
        self.conn = self._h11
        self._peer = ""
        self._counted = False
        self._head_limit = self.bounds.header_timeout
        self._head_since = self._last_byte = self._progress = 0.0
        self._buffered = 0
        shortest = min(self.bounds.header_timeout, self.bounds.idle_timeout)
        self._period = min(1.0, max(0.01, shortest / 8))
        self._watch: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Count the connection; past a cap, answer its request 503 without the app."""
        super().connection_made(transport)  # type: ignore[arg-type]
        self._peer = self.client[0] if self.client else ""
        reason = self.limiter.admit(self._peer)
        if reason is None:
            self._counted = True
        else:
            self.app = refusal(reason)
            self._head_limit = min(self._head_limit, _REFUSED_HEAD_TIMEOUT)
        self._head_since = self._last_byte = self._progress = self.loop.time()
        self._watch = self.loop.call_later(self._period, self._check)

    def connection_lost(self, exc: Exception | None) -> None:
        """Release the connection's count and its watch."""
        if self._counted:
            self._counted = False
            self.limiter.release(self._peer)
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Feed h11; the end of an answered request's body starts the wait for a head."""
        self._last_byte = self.loop.time()
        discarding = self._discarding()
        super().data_received(data)
        if discarding and not self._discarding():
            self._head_since = self._last_byte

    def on_response_complete(self) -> None:
        """Start the wait for the next request head."""
        self._head_since = self.loop.time()
        super().on_response_complete()

    def resume_writing(self) -> None:
        """The client read enough for the buffer to drain: that is progress."""
        self._progress = self.loop.time()
        super().resume_writing()

    def send_400_response(self, msg: str) -> None:
        """Answer malformed HTTP in JSON, with h11's status (431 for a head too large)."""
        error = self._h11.error
        status = error.error_status_hint if error is not None else 400
        if status == 431:
            limit = self.bounds.max_header_bytes
            detail = f"The request head is larger than this server accepts ({limit} bytes)."
        else:
            detail = f"Malformed HTTP request: {error if error is not None else msg}"
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # A request in progress: the app's answer must not follow this one.
            cycle.disconnected = True
            cycle.message_event.set()
            if cycle.response_started:
                self.transport.close()
                return
        self.transport.write(error_response(status, detail))
        self.transport.close()

    def _discarding(self) -> bool:
        """An answered request's body is still arriving (uvicorn reads and drops it)."""
        answered = self.cycle is None or self.cycle.response_complete
        return answered and self.conn.their_state is h11.SEND_BODY

    def _check(self) -> None:
        now = self.loop.time()
        transport = self.transport
        size = transport.get_write_buffer_size()
        if size == 0 or size < self._buffered:
            self._progress = now
        self._buffered = size
        idle = self.bounds.idle_timeout
        if size and now - self._progress >= idle:
            log.info(
                "%s: read none of the response for %g s; connection aborted, %d bytes dropped",
                self._peer,
                idle,
                size,
            )
            transport.abort()
            return
        if not transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
            if self.conn.their_state is h11.SEND_BODY:
                if now - self._last_byte >= idle:
                    log.info("%s: an answered request's body stalled for %g s", self._peer, idle)
                    transport.close()
            elif now - self._head_since >= self._head_limit:
                self._head_timed_out()
        self._watch = self.loop.call_later(self._period, self._check)

    def _head_timed_out(self) -> None:
        limit = self._head_limit
        if self.conn.trailing_data[0]:  # part of a head arrived: say why it is cut off
            log.info("%s: no whole request head within %g s; answered 408", self._peer, limit)
            detail = f"The request head did not arrive whole within {limit:g} s."
            self.transport.write(error_response(408, detail))
        self.transport.close()


def server_config(app: Starlette, **options: Any) -> uvicorn.Config:
    """uvicorn's config to serve ``app`` within its bounds (``app.state.bounds``).

    Args:
        app: An app from :func:`~fma_connect.server.create_app`.
        **options: More :class:`uvicorn.Config` arguments (host, port, log_level...).
    """
    bounds: Bounds = app.state.bounds

    class Protocol(BoundedProtocol):
        pass

    Protocol.bounds = bounds
    Protocol.limiter = ConnectionLimiter(bounds.max_connections, bounds.max_connections_per_client)
    if "log_config" not in options:
        options["log_config"] = _log_config(options.get("log_level") or "info")
    return uvicorn.Config(
        app, http=Protocol, h11_max_incomplete_event_size=bounds.max_header_bytes, **options
    )


def _log_config(level: str | int) -> dict[str, Any]:
    """uvicorn's logging, with the server's own log (``fma_connect``) through its handler.

    Without a handler the ``fma_connect`` records would reach only Python's last-resort
    handler, which drops everything below WARNING. They still propagate, so a test's
    ``caplog`` sees them.
    """
    config = copy.deepcopy(LOGGING_CONFIG)
    number = LOG_LEVELS[level.lower()] if isinstance(level, str) else level
    config["loggers"]["fma_connect"] = {"handlers": ["default"], "level": number}
    return config
