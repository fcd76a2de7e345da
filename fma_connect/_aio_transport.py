"""HTTP plumbing for the asyncio client: one aiohttp session, timeouts, retries, bodies.

The asyncio twin of :mod:`fma_connect._transport`, with the same rules (what is retried,
how long to wait, what error a failure becomes, worded by :mod:`fma_connect._messages`)
and the same memory bounds: uploads go out in :data:`~fma_connect._transport.SEND_SLICE`
slices of the caller's buffers; a download of known length goes into one buffer (or the
caller's arrays) in arrival-sized pieces, and resumes by ranges where the service allows.

aiohttp hands a body over as the ``bytes`` pieces it received (it has no ``readinto``),
so a download costs one copy the sync client avoids; its large-body speed is still the
closest to the sync client's of the asyncio libraries measured (docs/ASYNC.md).

:class:`AsyncTransport` is the one entry point; here is its retry loop (``request``). It
is built, as the sync transport is, as a stack of parts, each building on the one it
calls (with :mod:`fma_connect._transport_options` and :mod:`fma_connect._transport_bodies`
shared with the sync transport):

    _aio_transport_errors.py     aiohttp's failures as TransportErrors
    _aio_transport_session.py    the session, its options and TLS, one attempt sent
    _aio_transport_streaming.py  streamed bodies read and resumed by ranges

The names other modules import from here are still importable from here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from ._aio_transport_errors import _Unsent
from ._aio_transport_session import READ_BUFFER
from ._aio_transport_streaming import AsyncBodyReading, _Streamed
from ._messages import RETRY_STATUSES, Reply, api_error_of, backoff
from ._transport_bodies import Chunks
from .exceptions import ConnectError, RequestTimeout

__all__ = ["READ_BUFFER", "AsyncTransport"]


class AsyncTransport(AsyncBodyReading):
    """One aiohttp.ClientSession bound to a service's base URL.

    Its options (``base_url``, ``timeout``, ``retries``, ``session``, ``headers``,
    ``auth``, ``verify``, ``cert``) are
    :class:`~._aio_transport_session.AsyncTransportSession`'s; reading streamed bodies
    (``read_body_placed``, ``rest``) is :class:`~._aio_transport_streaming.AsyncBodyReading`'s.
    """

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
