"""The asyncio transport's session (the base of :class:`~._aio_transport.AsyncTransport`).

:class:`AsyncTransportSession` holds one aiohttp session bound to a service's base URL:
the options it was given (checked as the sync transport checks them, by
:mod:`fma_connect._transport_options`), TLS, and the sending of one attempt and the
reading of a small body whole, with failures mapped (:mod:`fma_connect._aio_transport_errors`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aiohttp

from ._aio_transport_errors import _cause, _mapped, _Unsent
from ._messages import join_url, timeout_message, unreachable_message
from ._tls import Cert, Verify, check_cert, check_verify, ssl_context
from ._transport_bodies import Chunks
from ._transport_options import (
    _BACKOFF_FACTOR,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    _check_headers,
    _check_retries,
    _check_timeout,
    _check_url,
    _redacted,
)
from .auth import TokenAuth
from .exceptions import ConfigurationError, ConnectError, RequestTimeout
from .identity import RequestSigner
from .signing import url_with_query

__all__ = ["READ_BUFFER", "AsyncTransportSession"]

#: Connections one client's own session keeps to the service at once.
_CONNECTIONS = 16
#: How much of a body aiohttp buffers before it stops reading the socket (its default,
#: 64 KiB, pauses a fast download every few reads).
READ_BUFFER = 1 << 20


class AsyncTransportSession:
    """One aiohttp.ClientSession bound to a service's base URL (the base of
    ``AsyncTransport``).

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
        _check_retries(retries)
        if session is not None and not isinstance(session, aiohttp.ClientSession):
            raise ConfigurationError(
                f"session must be an aiohttp.ClientSession (or None for a new one), got {session!r}"
            )
        _check_headers(headers)
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


async def _slices(chunks: Chunks) -> Any:
    """An upload's slices as aiohttp streams them (views of the caller's buffers)."""
    for piece in chunks:
        yield piece
