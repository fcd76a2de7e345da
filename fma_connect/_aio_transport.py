"""HTTP plumbing for the asyncio client: one aiohttp session, timeouts, retries, bodies.

The asyncio twin of :mod:`fma_connect._transport`, with the same rules (what is retried,
how long to wait, what error a failure becomes, worded by :mod:`fma_connect._messages`)
and the same memory bounds: uploads go out in :data:`~fma_connect._transport.SEND_SLICE`
slices of the caller's buffers; a download of known length goes into one buffer (or the
caller's arrays) in arrival-sized pieces, and resumes by ranges where the service allows.

aiohttp hands a body over as the ``bytes`` pieces it received (it has no ``readinto``),
so a download costs one copy the sync client avoids; its large-body speed is still the
closest to the sync client's of the asyncio libraries measured (docs/ASYNC.md).
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from ._downloads import (
    RECV_SLICE,
    Place,
    Reads,
    check_rest,
    placed_reads,
    rest_headers,
    resumable,
    whole_reads,
)
from ._messages import (
    RETRY_STATUSES,
    Progress,
    Reply,
    api_error_of,
    backoff,
    broken_message,
    join_url,
    timeout_message,
    unreachable_message,
)
from ._tls import Cert, Verify, check_cert, check_verify, ssl_context, ssl_reason
from ._transport import (
    _BACKOFF_FACTOR,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    Chunks,
    _check_timeout,
    _check_url,
    _redacted,
)
from .auth import TokenAuth
from .exceptions import (
    ConfigurationError,
    ConnectError,
    DecodeError,
    FMAConnectError,
    RequestTimeout,
    TransportError,
)
from .identity import RequestSigner
from .signing import url_with_query

__all__ = ["READ_BUFFER", "AsyncTransport"]

#: Connections one client's own session keeps to the service at once.
_CONNECTIONS = 16
#: How much of a body aiohttp buffers before it stops reading the socket (its default,
#: 64 KiB, pauses a fast download every few reads).
READ_BUFFER = 1 << 20


@dataclass
class _Streamed:
    """A streamed reply's aiohttp response and the headers its request was sent with
    (asked again, with a range, when the body breaks off)."""

    response: aiohttp.ClientResponse
    headers: dict[str, str]


class _Unsent(Exception):
    """A request that never reached the service (safe to send again whatever it was)."""

    def __init__(self, error: TransportError) -> None:
        super().__init__(str(error))
        self.error = error


class AsyncTransport:
    """One aiohttp.ClientSession bound to a service's base URL.

    Args:
        base_url, timeout, retries, headers, verify, cert: As for
            :class:`fma_connect._transport.Transport`.
        session: An aiohttp.ClientSession to share (many clients in one process share
            one connection pool); the transport closes only a session it created.
        auth: None, a :class:`~fma_connect.TokenAuth`, an ``aiohttp.BasicAuth`` or a
            ``(user, password)`` pair.

    Raises:
        ConfigurationError: an option is not what it must be.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float | tuple[float, float] | None = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        session: aiohttp.ClientSession | None = None,
        headers: Mapping[str, str] | None = None,
        auth: Any = None,
        verify: Verify = True,
        cert: Cert | None = None,
    ) -> None:
        self.base_url = _check_url(base_url).rstrip("/") + "/"
        #: aiohttp's ``ssl=`` for each request (a caller's session too).
        self._ssl = ssl_context(check_verify(verify), check_cert(cert))
        self.timeout = _check_timeout(timeout)
        if type(retries) is not int or retries < 0:
            raise ConfigurationError(f"retries must be an integer >= 0, got {retries!r}")
        if session is not None and not isinstance(session, aiohttp.ClientSession):
            raise ConfigurationError(
                f"session must be an aiohttp.ClientSession (or None for a new one), got {session!r}"
            )
        if headers is not None and not (
            isinstance(headers, Mapping)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items())
        ):
            raise ConfigurationError(
                f"headers must be a mapping of header names to str values, got {headers!r}"
            )
        self.headers = dict(headers or {})
        self._basic: aiohttp.BasicAuth | None = None
        if isinstance(auth, TokenAuth):
            self.headers["Authorization"] = f"Token {auth.token}"
        elif isinstance(auth, aiohttp.BasicAuth):
            self._basic = auth
        elif isinstance(auth, tuple) and len(auth) == 2 and all(isinstance(a, str) for a in auth):
            self._basic = aiohttp.BasicAuth(auth[0], auth[1])
        elif auth is not None:
            raise ConfigurationError(
                "auth must be fma_connect.TokenAuth(token), an aiohttp.BasicAuth, a (user, "
                f"password) tuple, or None; got {type(auth).__name__} {_redacted(auth)}"
            )
        self.retries = retries
        self.backoff_factor = _BACKOFF_FACTOR
        self._session = session
        self._owns_session = session is None
        #: Signs each attempt (an enrolled client's key), or None; every attempt,
        #: retries and range resumes included, goes through :meth:`_send`, which signs it.
        self.signer: RequestSigner | None = None

    def url(self, path: str) -> str:
        """Resolve ``path`` (API path, site-relative or absolute URL) against the base URL."""
        return join_url(self.base_url, path)

    def _client_timeout(self) -> aiohttp.ClientTimeout:
        # sock_read bounds silence between bytes, as requests' read timeout does: a
        # large transfer is never cut off for being long.
        timeout = self.timeout
        connect, read = timeout if isinstance(timeout, tuple) else (timeout, timeout)
        return aiohttp.ClientTimeout(total=None, sock_connect=connect, sock_read=read)

    def session(self) -> aiohttp.ClientSession:
        """The session, made on first use (aiohttp makes sessions inside a running loop)."""
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=_CONNECTIONS)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=self._client_timeout(), read_bufsize=READ_BUFFER
            )
        return self._session

    async def close(self) -> None:
        """Close the session if this transport created it."""
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | Chunks | None = None,
        content_type: str | None = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, Any] | None = None,
        stream: bool = False,
        resend: bool = False,
    ) -> Reply:
        """Send a request; return the 2xx reply or raise a TransportError subclass.

        Retried (``retries`` times, full-jitter backoff, Retry-After honoured up to 30 s):
        a request that never reached the service, whatever its method; a GET or HEAD
        that broke, timed out or was answered 429/502/503/504; and any request with
        ``resend`` (safe only when the service deduplicates it, e.g. by Idempotency-Key).
        """
        sent_headers = {**self.headers, **(headers or {})}
        if content_type:
            sent_headers["Content-Type"] = content_type
        url = self.url(path)
        repeatable = resend or method in ("GET", "HEAD")
        attempts = self.retries + 1
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                response = await self._send(method, url, body, sent_headers, params)
            except _Unsent as unsent:
                if last:
                    raise unsent.error from unsent.__cause__
                await asyncio.sleep(backoff(attempt, None, self.backoff_factor))
                continue
            except (ConnectError, RequestTimeout):
                if last or not repeatable:
                    raise
                await asyncio.sleep(backoff(attempt, None, self.backoff_factor))
                continue
            status = response.status
            if 200 <= status < 300:
                reply = Reply(status, response.headers, method, str(response.url), None, None)
                if stream:
                    reply.raw = _Streamed(response, sent_headers)
                    return reply
                try:
                    reply.content = await self._read_small(response, method, url)
                except (ConnectError, RequestTimeout):
                    if last or not repeatable:
                        raise
                    await asyncio.sleep(backoff(attempt, None, self.backoff_factor))
                    continue
                return reply
            content = await self._read_small(response, method, url)
            if last or status not in RETRY_STATUSES or not repeatable:
                raise api_error_of(status, content, method, str(response.url))
            retry_after = response.headers.get("Retry-After")
            await asyncio.sleep(backoff(attempt, retry_after, self.backoff_factor))
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _read_small(self, response: aiohttp.ClientResponse, method: str, url: str) -> bytes:
        """Read a (small) body whole, mapping failures as a request's."""
        try:
            return await response.read()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise _mapped(exc, method, url, self.base_url, self.timeout, sent=True) from exc
        finally:
            response.release()

    async def _send(
        self,
        method: str,
        url: str,
        body: bytes | Chunks | None,
        headers: dict[str, str],
        params: Mapping[str, Any] | None,
    ) -> aiohttp.ClientResponse:
        if self.signer is not None:  # signed afresh for each attempt, over the query sent
            url, params = url_with_query(url, params), None
            headers = {**headers, **self.signer(method, url, headers)}
        data: Any = body
        if isinstance(body, Chunks):
            # A sized stream: aiohttp sends the Content-Length given instead of chunking.
            headers = {**headers, "Content-Length": str(body.nbytes)}
            data = _slices(body)
        query = None if params is None else {k: str(v) for k, v in params.items()}
        try:
            return await self.session().request(
                method,
                url,
                data=data,
                headers=headers,
                params=query,
                auth=self._basic,
                allow_redirects=method == "GET",
                ssl=self._ssl,
            )
        except aiohttp.ClientConnectorError as exc:
            raise _Unsent(
                ConnectError(unreachable_message(method, url, self.base_url, _cause(exc)))
            ) from exc
        except aiohttp.ConnectionTimeoutError as exc:
            raise _Unsent(RequestTimeout(timeout_message(method, url, self.timeout))) from exc
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise _mapped(
                exc, method, url, self.base_url, self.timeout, sent=body is not None
            ) from exc

    async def read_body_placed(
        self, reply: Reply, place: Place | None, progress: Progress | None = None
    ) -> Any:
        """Read a streamed reply's body as ``Transport.read_body_placed`` does.

        Returns:
            None when the body went into ``place``'s buffers, else the whole body
            (a writable buffer).

        Raises:
            DecodeError: the body ended before its Content-Length.
            RequestTimeout / ConnectError / TransportError: it stalled or broke for good.
        """
        streamed: _Streamed = reply.raw
        response = streamed.response
        length = response.headers.get("Content-Length")
        download: _Download | None = None
        try:
            if length is None or not length.isdigit() or response.headers.get("Content-Encoding"):
                buffer = bytearray()
                async for chunk in response.content.iter_any():
                    buffer += chunk
                    if progress is not None:
                        progress(len(buffer), None)
                return buffer
            size = int(length)
            download = _Download(self, streamed, reply.url, size, progress)
            reads = whole_reads(size) if place is None else placed_reads(size, place)
            return await download.run(reads)
        except FMAConnectError:
            raise
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise RequestTimeout(f"download of {reply.url} stalled: {_cause(exc)}") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise ConnectError(f"download of {reply.url} broke: {_cause(exc)}") from exc
        finally:
            (download.streamed.response if download else response).release()

    async def rest(self, streamed: _Streamed, url: str, start: int, length: int) -> _Streamed:
        """Ask for bytes ``start`` to the end of the body ``streamed`` was sending.

        Raises:
            ConnectError / RequestTimeout: the service could not be reached.
            TransportError: it answered something else than those bytes of the same
                representation.
        """
        etag = streamed.response.headers.get("ETag", "")
        headers = rest_headers(streamed.headers, start, etag)
        try:
            rest = await self._send("GET", url, None, headers, None)
        except _Unsent as unsent:
            raise unsent.error from unsent.__cause__
        try:
            check_rest(url, rest.status, rest.headers.get("Content-Range"), start, length)
        except TransportError:
            rest.release()
            raise
        return _Streamed(rest, headers)


class _Download:
    """A body of ``length`` bytes read in order into windows; resumed as ``Download`` is
    (the same rule: ``retries`` breaks in a row without progress at most)."""

    def __init__(
        self,
        transport: AsyncTransport,
        streamed: _Streamed,
        url: str,
        length: int,
        progress: Progress | None,
    ) -> None:
        self.transport, self.streamed, self.url, self.length = transport, streamed, url, length
        self.got = 0
        self._progress = progress
        self._pending = memoryview(b"")
        self._resumable = resumable(streamed.response.headers)

    async def run(self, reads: Reads) -> memoryview | None:
        """Carry out a reading plan (``whole_reads``, ``placed_reads``)."""
        try:
            window, until = next(reads)
            while True:
                await self.read(window, until)
                window, until = reads.send(None)
        except StopIteration as stop:
            result: memoryview | None = stop.value
            return result

    async def read(self, window: Any, until: int) -> None:
        """Read the body up to byte ``until`` into ``window(at)``, resuming breaks."""
        retries = self.transport.retries
        stalls = 0
        while True:
            before = self.got
            error = await self._read(window, until)
            if error is None:
                return
            self.streamed.response.release()
            # Retries count the breaks that brought nothing (retries=0: never resumed).
            stalls = 0 if self.got > before else stalls + 1
            while True:
                if not self._resumable or not retries or stalls > retries:
                    raise error
                await asyncio.sleep(backoff(stalls, None, self.transport.backoff_factor))
                try:
                    self.streamed = await self.transport.rest(
                        self.streamed, self.url, self.got, self.length
                    )
                    self._pending = memoryview(b"")
                    break
                except (ConnectError, RequestTimeout) as exc:  # not reachable yet
                    error, stalls = exc, stalls + 1

    async def _read(self, window: Any, until: int) -> BaseException | None:
        """Read on from ``got``; return why the body stopped before ``until``, or None."""
        content = self.streamed.response.content
        try:
            while self.got < until:
                view = window(self.got)[: min(RECV_SLICE, until - self.got)]
                if not self._pending.nbytes:
                    chunk = await content.readany()
                    if not chunk:
                        return DecodeError(
                            f"response from {self.url} is truncated: got {self.got} "
                            f"of {self.length} bytes"
                        )
                    self._pending = memoryview(chunk)
                n = min(view.nbytes, self._pending.nbytes)
                view[:n] = self._pending[:n]
                self._pending = self._pending[n:]
                self.got += n
                if self._progress is not None:
                    self._progress(self.got, self.length)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            return exc
        return None


async def _slices(chunks: Chunks) -> Any:
    """An upload's slices as aiohttp streams them (views of the caller's buffers)."""
    for piece in chunks:
        yield piece


def _mapped(
    exc: BaseException, method: str, url: str, base_url: str, timeout: object, *, sent: bool
) -> TransportError:
    """The TransportError of a failed exchange, as the sync transport words it."""
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return RequestTimeout(timeout_message(method, url, timeout))
    if isinstance(exc, aiohttp.ClientOSError | aiohttp.ServerDisconnectedError | OSError):
        if sent:
            return ConnectError(broken_message(method, url, _cause(exc)))
        return ConnectError(unreachable_message(method, url, base_url, _cause(exc)))
    if isinstance(exc, aiohttp.ClientPayloadError):
        return ConnectError(broken_message(method, url, _cause(exc)))
    return TransportError(f"{method} {url}: {type(exc).__name__}: {exc}")


def _cause(exc: BaseException) -> str:
    """The innermost reason, e.g. "connection refused" (worded as ``_root_cause`` does)."""
    error = getattr(exc, "os_error", None) or getattr(exc, "certificate_error", None) or exc
    if isinstance(error, ssl.SSLError):  # its errno is OpenSSL's, not the OS's
        return ssl_reason(error)
    errno = getattr(error, "errno", None)
    text = os.strerror(errno) if isinstance(errno, int) and errno else str(error)
    text = text or type(exc).__name__
    if len(text) > 1 and text[0].isupper() and text[1].islower():
        text = text[0].lower() + text[1:]
    return text.rstrip(".")
