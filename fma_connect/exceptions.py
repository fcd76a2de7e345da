"""The fma_connect error tree.

Every error the library raises on purpose derives from :class:`FMAConnectError`::

    FMAConnectError
    ├── CodecError
    │   ├── UnknownCodecError     no installed codec has that name / media type / tag
    │   ├── EncodeError           the weights cannot be written in the chosen codec
    │   └── DecodeError           a payload is corrupt, truncated, hostile or of an unknown format
    ├── FrameworkError            weights do not fit the template / framework they are restored into
    ├── PluginError               a plugin failed to load or registered a clashing name
    └── TransportError
        ├── ConnectError          the service could not be reached
        ├── RequestTimeout        the service stopped answering
        └── APIError              the service answered with a non-2xx status (alias: APIException)

Messages say what was expected, what arrived and, where there is one, how to fix it.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "APIError",
    "APIException",
    "CodecError",
    "ConnectError",
    "DecodeError",
    "EncodeError",
    "FMAConnectError",
    "FrameworkError",
    "PluginError",
    "RequestTimeout",
    "TransportError",
    "UnknownCodecError",
]


class FMAConnectError(Exception):
    """Base class of every error raised by fma_connect."""


class CodecError(FMAConnectError):
    """A codec could not be found, or could not encode or decode a payload."""


class UnknownCodecError(CodecError, LookupError):
    """No installed codec matches the requested name, media type or payload tag."""


class EncodeError(CodecError, ValueError):
    """The weights cannot be written in the chosen codec."""


class DecodeError(CodecError, ValueError):
    """A payload is corrupt, truncated, hostile, or in an unknown format version."""


class FrameworkError(FMAConnectError, TypeError):
    """Received weights do not fit the template or framework they are restored into."""


class PluginError(FMAConnectError):
    """A plugin failed to load, or registered a name that is already taken."""


class TransportError(FMAConnectError):
    """The request did not produce a successful answer from the service."""


class ConnectError(TransportError, ConnectionError):
    """The service could not be reached (refused, DNS failure, TLS error...)."""


class RequestTimeout(TransportError, TimeoutError):
    """The service accepted the connection but stopped answering within the timeout."""


class APIError(TransportError):
    """The service answered with a non-2xx status.

    The message keeps the original client's format,
    ``An API error occurred (status_code=403): {...}``, so existing log parsers still match.

    Attributes:
        status_code: The HTTP status code.
        detail: The parsed JSON error body, or a short text excerpt of a non-JSON body.
        hint: What to do about it, when the client knows.
    """

    def __init__(self, status_code: int, detail: Any, hint: str | None = None) -> None:
        self.status_code = status_code
        self.detail = detail
        self.hint = hint
        message = f"An API error occurred (status_code={status_code}): {detail}"
        if hint:
            message = f"{message}. {hint}"
        super().__init__(message)


#: The original client's name for :class:`APIError`.
APIException = APIError
