"""HTTP errors of the reference server, always answered as JSON.

Bodies follow Django REST framework's shapes, as the stock service sends them:
``{"detail": "..."}`` for authentication, permission and lookup failures, and
``{"<field>": ["message", ...]}`` for invalid input.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "HTTPError",
    "ObjectStoreError",
    "bad_request",
    "forbidden",
    "not_found",
    "unauthorized",
]

NOT_FOUND = "Not found."
NOT_AUTHENTICATED = "Authentication credentials were not provided."
NO_PERMISSION = "You do not have permission to perform this action."


class ObjectStoreError(OSError):
    """A request to the object store failed (what was asked, and the store's answer).

    An :class:`OSError`, as a blob file that cannot be read raises: callers that
    survive an unreadable file survive an unreachable store alike. A missing object
    raises :class:`FileNotFoundError` instead. A request it reaches unhandled is
    answered 503 with ``Retry-After`` (the store may be back in a moment).
    """


class HTTPError(Exception):
    """An error answered to the client with ``status`` and the JSON ``body``.

    Attributes:
        status: The HTTP status code.
        body: The JSON body (a dict).
        headers: Extra response headers.
    """

    def __init__(
        self, status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(f"{status}: {dict(body)}")
        self.status = status
        self.body = dict(body)
        self.headers = dict(headers or {})


def detail(status: int, message: str, **extra: Any) -> HTTPError:
    """Return an error whose body is ``{"detail": message, **extra}``."""
    headers = {"WWW-Authenticate": "Token"} if status == 401 else None
    return HTTPError(status, {"detail": message, **extra}, headers)


def not_found(message: str = NOT_FOUND) -> HTTPError:
    """Return a 404 error."""
    return detail(404, message)


def unauthorized(message: str = NOT_AUTHENTICATED) -> HTTPError:
    """Return a 401 error (it carries ``WWW-Authenticate: Token``, as DRF's does)."""
    return detail(401, message)


def forbidden(message: str = NO_PERMISSION) -> HTTPError:
    """Return a 403 error."""
    return detail(403, message)


def bad_request(field: str, *messages: str) -> HTTPError:
    """Return a 400 validation error about ``field`` (``non_field_errors`` for the whole body)."""
    return HTTPError(400, {field: list(messages)})
