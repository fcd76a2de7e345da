"""The options both transports take: their defaults, the service's API prefix, the checks.

:class:`~fma_connect._transport.Transport` (requests) and
:class:`~fma_connect._aio_transport.AsyncTransport` (aiohttp) check a base URL and a
timeout the same way, with the same defaults; ``_check_options`` checks the requests
transport's session, headers and auth.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

import requests

from .exceptions import ConfigurationError

__all__ = ["API_PREFIX", "DEFAULT_RETRIES", "DEFAULT_TIMEOUT"]

#: (connect, read) seconds. The read timeout bounds silence between bytes, not a whole
#: transfer, so large payloads are not cut off (the original client's 10 s total was).
DEFAULT_TIMEOUT: tuple[float, float] = (10.0, 120.0)
#: Attempts after the first, for what is safe to retry.
DEFAULT_RETRIES = 3
_BACKOFF_FACTOR = 0.5
#: Every API path starts with this; the base URL is the service root above it.
API_PREFIX = "api/v1/"


def _check_url(url: object) -> str:
    parts = urlsplit(url) if isinstance(url, str) else None
    if (
        not isinstance(url, str)
        or parts is None
        or parts.scheme not in ("http", "https")
        or not parts.hostname
    ):
        raise ConfigurationError(
            f"url must look like http://host:port or https://host/prefix, got {url!r}"
        )
    api = API_PREFIX.rstrip("/")
    if parts.path.rstrip("/").endswith("/" + api):
        # Every request path starts with api/v1/ already: this base would double it.
        root = url[: url.rindex(api)]
        raise ConfigurationError(
            f"url must be the service root, without /{api} (the client adds it to every "
            f"request path): use {root!r} instead of {url!r}"
        )
    return url


def _check_retries(retries: object) -> None:
    if type(retries) is not int or retries < 0:
        raise ConfigurationError(f"retries must be an integer >= 0, got {retries!r}")


def _check_headers(headers: object) -> None:
    if headers is not None and not (
        isinstance(headers, Mapping)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items())
    ):
        raise ConfigurationError(
            f"headers must be a mapping of header names to str values, got {headers!r}"
        )


def _check_options(session: object, headers: object, auth: object) -> None:
    if session is not None and not isinstance(session, requests.Session):
        raise ConfigurationError(
            f"session must be a requests.Session (or None for a new one), got {session!r}"
        )
    _check_headers(headers)
    basic = isinstance(auth, tuple) and len(auth) == 2
    if auth is not None and not basic and not callable(auth):
        raise ConfigurationError(
            "auth must be a requests auth such as fma_connect.TokenAuth(token), a (user, "
            f"password) tuple, or None; got {type(auth).__name__} {_redacted(auth)}"
        )


def _redacted(value: object) -> str:
    # A misplaced secret (auth="s3cret") must not end up in logs through the message.
    return "<hidden>" if isinstance(value, str | bytes) else repr(value)


def _check_timeout(timeout: object) -> float | tuple[float, float] | None:
    values = timeout if isinstance(timeout, tuple) else (timeout,)
    if len(values) not in (1, 2) or not all(
        v is None or (isinstance(v, int | float) and not isinstance(v, bool) and v > 0)
        for v in values
    ):
        raise ConfigurationError(
            f"timeout must be seconds > 0, a (connect, read) pair of them, or None; got {timeout!r}"
        )
    return timeout  # type: ignore[return-value]  # checked above
