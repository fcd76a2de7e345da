"""The HTTP/1.1 connections of the reference server: uvicorn's httptools protocol, bounded.

uvicorn (0.54, httptools) leaves these open: no timeout on a request head (a connection
that sends nothing is kept for good), no bound on its size (httptools parses a head of
any length), none on sending (a client that stops reading pins the response's buffers
for as long as it stays connected, and closing such a connection waits for a flush that
never comes), connections counted only once their request has arrived
(``limit_concurrency``, answered in text/plain), and malformed HTTP answered in
text/plain, its reason dropped. httptools (a C parser, llhttp) is also laxer than h11
where the server relies on it: it takes an HTTP/1.1 request without ``Host`` and hands
the app a body in a transfer coding other than ``chunked``.

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

A head is measured as it arrives: a whole one from its parts when httptools reports it
complete, an incomplete one by the bytes read since it began. The read in which a
pipelined head begins is not counted (where in it the head starts is not known), so a
head is refused at most one read past ``max_header_bytes`` (256 KiB; 4 MiB when the
read began in the previous request's body).

The connections read into one buffer of their server (asyncio's buffered protocol),
4 MiB at a time in a body, and hand the app a body piece without copying it again:
uvicorn's own path allocated a new 256 KiB buffer a read and copied each piece twice
more, which took half of the server's CPU on a large upload (docs/PERFORMANCE.md).
Sharing the buffer is safe because a read is parsed whole before the loop reads again.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import ssl
from typing import Any, ClassVar

import httptools
import uvicorn
from starlette.applications import Starlette
from uvicorn.config import LOG_LEVELS, LOGGING_CONFIG, Config
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from .bounds import Bounds, ConnectionLimiter, error_response, refusal

__all__ = ["BODY_READ", "BoundedProtocol", "server_config"]

#: Seconds a refused connection may take to send its head (it is answered 503 at once).
_REFUSED_HEAD_TIMEOUT = 1.0
#: Bytes of a request head beyond its method, target and headers ("HTTP/1.1", CRLFs).
_HEAD_OVERHEAD = 14
#: Bytes read at a time in a request body, and elsewhere (asyncio's own read size).
BODY_READ = 4 << 20
_READ = 256 << 10
log = logging.getLogger("fma_connect.server")


class _Refused(Exception):
    """A request refused below the app: its status and the detail of the JSON answer."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class BoundedProtocol(HttpToolsProtocol, asyncio.BufferedProtocol):
    """uvicorn's httptools protocol with the bounds of :mod:`.bounds` (see the module).

    Use a subclass made by :func:`server_config`, which sets :attr:`bounds`, and gives
    the server its own :attr:`limiter` and :attr:`reads` buffer.
    """

    bounds: ClassVar[Bounds]
    limiter: ClassVar[ConnectionLimiter]
    reads: ClassVar[memoryview]

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._peer = ""
        self._counted = False
        self._head_limit = self.bounds.header_timeout
        self._head_since = self._last_byte = self._progress = 0.0
        self._buffered = 0
        # Where the parser is: in a head (begun, not whole), in a body, or between requests.
        self._in_head = self._in_body = False
        self._head_bytes = 0
        self._began = self._ended = False  # a request began / ended in the current read
        self._refused: _Refused | None = None
        shortest = min(self.bounds.header_timeout, self.bounds.idle_timeout)
        self._period = min(1.0, max(0.01, shortest / 8))
        self._watch: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Count the connection; past a cap, answer its request 503 without the app."""
        super().connection_made(transport)
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

    def get_buffer(self, sizehint: int) -> memoryview:
        """Where the next read goes: the server's buffer (see the module)."""
        return self.reads if self._in_body else self.reads[:_READ]

    def buffer_updated(self, nbytes: int) -> None:
        """Parse the bytes just read into the server's buffer."""
        self.data_received(self.reads[:nbytes])

    def data_received(self, data: bytes | memoryview) -> None:
        """Feed httptools; bound the head that is still incomplete after this read."""
        self._last_byte = self.loop.time()
        self._unset_keepalive_if_required()
        between = not (self._in_head or self._in_body)
        self._began = self._ended = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError as exc:
            self.logger.warning("Invalid HTTP request received.")
            if self._refused is None:
                self._refused = _Refused(400, f"Malformed HTTP request: {exc}")
            self.send_400_response(str(exc))
            return
        if self._in_head:
            if not self._began:  # the whole read is part of the head
                self._head_bytes += len(data)
            elif between and not self._ended:  # it began the read, but for CRLFs before it
                self._head_bytes = len(data)
            if self._head_bytes > self.bounds.max_header_bytes:
                self.logger.warning("Invalid HTTP request received.")
                self._refused = self._too_large()
                self.send_400_response("request head too large")

    # -- parser callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        """A request head begins."""
        self._in_head, self._began, self._head_bytes = True, True, 0
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        """Check the whole head (size, ``Host``, transfer coding) before the app sees it."""
        self._in_head, self._in_body = False, True
        try:
            self._check_head()
        except _Refused as refused:
            self._refused = refused
            raise  # httptools stops parsing: data_received answers it
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        """Queue a piece of the body for the app, as uvicorn does but not copied into a
        buffer first when the app has taken every earlier piece (the usual case)."""
        cycle = self.cycle
        if cycle.response_complete or (self.parser.should_upgrade() and self._should_upgrade()):
            return
        if not cycle.body:
            # uvicorn's receive() hands the app bytes(cycle.body): these bytes themselves.
            cycle.body = body  # type: ignore[assignment]
        else:
            if not isinstance(cycle.body, bytearray):
                cycle.body = bytearray(cycle.body)
            cycle.body += body
        if len(cycle.body) > HIGH_WATER_LIMIT:
            self.flow.pause_reading()
        cycle.message_event.set()

    def on_message_complete(self) -> None:
        """The end of an answered request's body starts the wait for the next head."""
        self._in_body, self._ended = False, True
        if self.cycle is None or self.cycle.response_complete:
            self._head_since = self.loop.time()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        """Start the wait for the next request head."""
        self._head_since = self.loop.time()
        super().on_response_complete()

    def resume_writing(self) -> None:
        """The client read enough for the buffer to drain: that is progress."""
        self._progress = self.loop.time()
        super().resume_writing()

    def send_400_response(self, msg: str) -> None:
        """Answer malformed HTTP in JSON, with its status (431 for a head too large)."""
        refused = self._refused or _Refused(400, f"Malformed HTTP request: {msg}")
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # A request in progress: the app's answer must not follow this one.
            cycle.disconnected = True
            cycle.message_event.set()
            if cycle.response_started:
                self.transport.close()
                return
        self.transport.write(error_response(refused.status, refused.detail))
        self.transport.close()

    # -- the bounds -----------------------------------------------------------------------

    def _check_head(self) -> None:
        """Refuse a head too large, an HTTP/1.1 one without ``Host``, a coding not chunked."""
        size = _HEAD_OVERHEAD + len(self.parser.get_method()) + len(self.url)
        size += sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > self.bounds.max_header_bytes:
            raise self._too_large()
        names = [name for name, _ in self.headers]
        if self.parser.get_http_version() == "1.1" and b"host" not in names:
            raise _Refused(400, "Malformed HTTP request: Missing mandatory Host: header")
        for name, value in self.headers:
            if name == b"transfer-encoding" and value.strip().lower() != b"chunked":
                raise _Refused(501, "Only Transfer-Encoding: chunked is supported")

    def _too_large(self) -> _Refused:
        limit = self.bounds.max_header_bytes
        detail = f"The request head is larger than this server accepts ({limit} bytes)."
        return _Refused(431, detail)

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
            if self._in_body:  # an answered request's body, read and dropped
                if now - self._last_byte >= idle:
                    log.info("%s: an answered request's body stalled for %g s", self._peer, idle)
                    transport.close()
            elif now - self._head_since >= self._head_limit:
                self._head_timed_out()
        self._watch = self.loop.call_later(self._period, self._check)

    def _head_timed_out(self) -> None:
        limit = self._head_limit
        if self._in_head:  # part of a head arrived: say why it is cut off
            log.info("%s: no whole request head within %g s; answered 408", self._peer, limit)
            detail = f"The request head did not arrive whole within {limit:g} s."
            self.transport.write(error_response(408, detail))
        self.transport.close()


def server_config(
    app: Starlette, *, tls: ssl.SSLContext | None = None, **options: Any
) -> uvicorn.Config:
    """uvicorn's config to serve ``app`` within its bounds (``app.state.bounds``).

    Args:
        app: An app from :func:`~fma_connect.server.create_app`.
        tls: Serve HTTPS with this context (see :func:`.tls.server_context`).
        **options: More :class:`uvicorn.Config` arguments (host, port, log_level...).
    """
    bounds: Bounds = app.state.bounds

    class Protocol(BoundedProtocol):
        pass

    Protocol.bounds = bounds
    Protocol.limiter = ConnectionLimiter(bounds.max_connections, bounds.max_connections_per_client)
    Protocol.reads = memoryview(bytearray(BODY_READ))  # its pages are touched when used
    if "log_config" not in options:
        options["log_config"] = _log_config(options.get("log_level") or "info")
    if tls is not None:
        options["ssl_context_factory"] = lambda _config, _default: tls
    return uvicorn.Config(app, http=Protocol, **options)


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
