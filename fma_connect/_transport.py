"""HTTP plumbing for the client: one Session, timeouts, retries, URLs, errors, bodies.

Nothing here knows a wire format; :mod:`fma_connect.clients` decides what to send.

:class:`Transport` is the one entry point; here is its resend loop (``request``), which
sleeps through this module's ``time`` (the reliability tests replace it to record the
sleeps). It is built as a stack of parts, each building on the one it calls:

    _transport_options.py    defaults, the API prefix, checks of the options (shared with
                             :mod:`fma_connect._aio_transport`)
    _transport_bodies.py     what is sent: JSON bytes, :class:`Chunks` (shared too)
    _transport_errors.py     requests' failures as TransportErrors, :func:`api_error`
    _transport_session.py    the Session, TLS, urllib3's jittered retries, one attempt sent
    _transport_streaming.py  streamed bodies read and resumed by ranges

The names other modules import from here are still importable from here.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import requests

from ._messages import RETRY_STATUSES
from ._transport_bodies import SEND_SLICE, Chunks, Progress, dumps_json
from ._transport_errors import api_error
from ._transport_options import API_PREFIX, DEFAULT_RETRIES, DEFAULT_TIMEOUT
from ._transport_session import JitterRetry
from ._transport_streaming import BodyReading
from .exceptions import ConnectError, RequestTimeout

__all__ = [
    "API_PREFIX",
    "DEFAULT_RETRIES",
    "DEFAULT_TIMEOUT",
    "LONG_POLL_HEADER",
    "RETRY_STATUSES",
    "SEND_SLICE",
    "Chunks",
    "JitterRetry",
    "Progress",
    "Transport",
    "api_error",
    "dumps_json",
]

#: The header by which a service says it can hold ``get_latest_aggregate`` (docs/ROUNDS.md).
LONG_POLL_HEADER = "FMA-Long-Poll"


class Transport(BodyReading):
    """One requests.Session bound to a service's base URL.

    Its options and TLS are :class:`~._transport_session.TransportSession`'s (``verify``
    and ``cert`` as :mod:`fma_connect._tls` describes); reading streamed bodies
    (``read_body``, ``read_body_placed``) is :class:`~._transport_streaming.BodyReading`'s.
    """

    def request(
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
    ) -> requests.Response:
        """Send a request; return the 2xx response or raise a TransportError subclass.

        Args:
            resend: Also retry a non-GET request whose outcome is unknown (connection
                lost or timed out after sending, 429/502/503/504). Safe only when the
                service deduplicates it, e.g. by its Idempotency-Key header.
        """
        all_headers = dict(headers or {})
        if content_type:
            all_headers["Content-Type"] = content_type
        url = self.url(path)
        repeatable = resend and method != "GET"
        if self.signer is not None and method in ("GET", "HEAD"):
            repeatable = True  # urllib3 does not retry these then (see sign_with)
        attempts = self.retries + 1 if repeatable else 1
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                response = self._send(method, url, body, all_headers, params, stream)
            except (ConnectError, RequestTimeout):
                if last:
                    raise
                time.sleep(self._backoff(attempt, None))
                continue
            if 200 <= response.status_code < 300:
                return response
            if last or response.status_code not in RETRY_STATUSES:
                raise api_error(response)
            response.close()  # a streamed GET's connection goes back to the pool
            time.sleep(self._backoff(attempt, response.headers.get("Retry-After")))
        raise AssertionError("unreachable: the last attempt returns or raises")
