"""The asyncio transport's failures as :mod:`fma_connect.exceptions` errors.

The twin of :mod:`fma_connect._transport_errors` for aiohttp's exceptions, worded by
:mod:`fma_connect._messages` as the sync transport words them; :class:`_Unsent` marks
a request that never reached the service (safe to send again whatever it was).
"""

from __future__ import annotations

import os
import ssl

import aiohttp

from ._messages import broken_message, timeout_message, unreachable_message
from ._tls import ssl_reason
from .exceptions import ConnectError, RequestTimeout, TransportError

__all__: list[str] = []


class _Unsent(Exception):
    """A request that never reached the service (safe to send again whatever it was)."""

    def __init__(self, error: TransportError) -> None:
        super().__init__(str(error))
        self.error = error


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
