"""The requests transport's failures as :mod:`fma_connect.exceptions` errors.

:func:`api_error` builds the APIError of a non-2xx response; the helpers below look
through the exceptions requests and urllib3 wrap one in another for what happened (a
timeout, the innermost cause, whether a body may have gone out), which
:class:`~fma_connect._transport.Transport` turns into a TransportError worded by
:mod:`fma_connect._messages`.
"""

from __future__ import annotations

import ssl

import requests
import urllib3

from ._messages import api_error_of
from ._tls import ssl_reason
from .exceptions import APIError

__all__ = ["api_error"]


def api_error(response: requests.Response, hint: str | None = None) -> APIError:
    """Build the APIError for a non-2xx response: its JSON detail, or a short text excerpt."""
    request = response.request
    return api_error_of(
        response.status_code, response.content, str(request.method), str(request.url), hint
    )


def _timed_out(exc: BaseException) -> bool:
    # urllib3 reports a read timeout that exhausted its retries as a ConnectionError
    # wrapping MaxRetryError(reason=ReadTimeoutError): look through the chain.
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, urllib3.exceptions.NewConnectionError):
            return False  # refused or unreachable (a subclass of ConnectTimeoutError!)
        if isinstance(seen, requests.Timeout | urllib3.exceptions.TimeoutError):
            return True
        reason = getattr(seen, "reason", None)
        if isinstance(reason, BaseException):
            seen = reason
        else:
            seen = seen.args[0] if seen.args and isinstance(seen.args[0], BaseException) else None
    return False


def _root_cause(exc: BaseException) -> str:
    """The innermost reason of a failed request, e.g. "connection refused".

    requests wraps urllib3's MaxRetryError, which wraps a NewConnectionError, which is
    caused by the socket's own error; each layer's message repeats the layers below
    with pool and host details. The deepest OS error message says it all.
    """
    reason: str | None = None
    innermost = exc
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        innermost = current
        if isinstance(current, ssl.SSLError):
            reason = ssl_reason(current)
        elif isinstance(current, OSError) and isinstance(current.strerror, str):
            reason = current.strerror
        inner = getattr(current, "reason", None)
        if not isinstance(inner, BaseException):
            first = current.args[0] if current.args else None
            inner = first if isinstance(first, BaseException) else None
        current = inner or current.__cause__ or current.__context__
    text = reason or str(innermost) or type(innermost).__name__
    if len(text) > 1 and text[0].isupper() and text[1].islower():
        text = text[0].lower() + text[1:]  # "Connection refused" reads as a clause
    return text.rstrip(".")


#: What a connection that never carried the body fails with: refused, unresolvable, or a
#: TLS handshake that failed (a certificate not trusted, TLS to a plain port).
_UNSENT_MARKERS = (
    "NewConnectionError",
    "NameResolutionError",
    "Connection refused",
    "SSLCertVerificationError",
    "WRONG_VERSION_NUMBER",
)


def _sent(exc: BaseException) -> bool:
    # Anything but the failures above may have happened after the body went out.
    text = repr(exc)
    return not any(marker in text for marker in _UNSENT_MARKERS)
