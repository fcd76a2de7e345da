"""The fma_connect error tree.

Every error the library raises on purpose derives from :class:`FMAConnectError`::

    FMAConnectError
    ├── CodecError
    │   ├── UnknownCodecError     no installed codec has that name / media type / tag
    │   ├── EncodeError           the weights cannot be written in the chosen codec
    │   └── DecodeError           a payload is corrupt, truncated, hostile or of an unknown
    │       │                     format, or a codec decoded it to something other than arrays
    │       └── TooManyTensorsError  it holds more tensors than the receiver's max_tensors
    ├── FrameworkError            weights do not fit the template / framework they are restored into
    ├── ConfigurationError        a client option or argument is malformed (URL, uuid, codec...)
    ├── PluginError               a plugin failed to load, or registered a malformed codec or a
    │                             clashing name or media type
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
    "ConfigurationError",
    "ConnectError",
    "DecodeError",
    "EncodeError",
    "FMAConnectError",
    "FrameworkError",
    "PluginError",
    "RequestTimeout",
    "TooManyTensorsError",
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


class TooManyTensorsError(DecodeError):
    """A payload holds more tensors than the receiver accepts (its ``max_tensors``).

    Attributes:
        count: The tensors the payload holds (as its header says, when raised early).
        limit: The most the receiver accepts.
    """

    def __init__(self, count: int, limit: int) -> None:
        self.count = count
        self.limit = limit
        super().__init__(f"the payload holds {count} tensors; at most {limit} are accepted")

    def __reduce__(self) -> tuple[type[TooManyTensorsError], tuple[int, int]]:
        # Rebuild from the constructor's arguments, as APIError does, so it pickles.
        return (type(self), (self.count, self.limit))


class FrameworkError(FMAConnectError, TypeError):
    """Received weights do not fit the template or framework they are restored into."""


class ConfigurationError(FMAConnectError, ValueError):
    """An option given to the client is malformed; the message says what was expected."""


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
    ``An API error occurred (status_code=403): {...}``, and so does the constructor
    (``APIException(status_code=None, message=None)``), so existing code still matches.

    Attributes:
        status_code: The HTTP status code (None when there was no answer).
        detail: The parsed JSON error body, or a short text excerpt of a non-JSON body.
        hint: What to do about it, when the client knows.
        error_message: The formatted message (the original client's attribute).
    """

    def __init__(
        self, status_code: int | None = None, message: Any = None, hint: str | None = None
    ) -> None:
        self.status_code = status_code
        self.detail = message
        self.hint = hint
        shown = "Could not connect to the server." if message is None else message
        status = "NULL" if status_code is None else status_code
        self.error_message = f"An API error occurred (status_code={status}): {shown}"
        if hint:
            self.error_message = f"{self.error_message}. {hint}"
        super().__init__(self.error_message)

    def __reduce__(self) -> tuple[type[APIError], tuple[int | None, Any, str | None]]:
        # Rebuild from the constructor's arguments, so the error survives pickling
        # (multiprocessing, concurrent.futures) instead of failing on its message.
        return (type(self), (self.status_code, self.detail, self.hint))


#: The original client's name for :class:`APIError`.
APIException = APIError
