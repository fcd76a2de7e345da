"""The messages between the client protocol and whatever moves its bytes (no I/O here).

:class:`~fma_connect._protocol.ClientProtocol` says what a call means as a generator
that yields commands and is sent their results::

    Request  -> Reply        send a request; a non-2xx answer is thrown in as APIError
    Requests -> [Reply]      send several, a few at once (the chunks of an upload)
    ReadBody -> buffer|None  read a streamed reply's body (into ``place``'s buffers)
    Close    -> None         drop a streamed reply's body unread
    Sleep    -> None         wait before polling again

A driver runs such a flow: :class:`~fma_connect.clients.WebClient` with requests,
:class:`~fma_connect.aio.AsyncWebClient` with aiohttp. Both build errors and their
messages with the functions here, so the two raise the same exceptions, worded alike.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urljoin

import orjson

from ._tls import tls_hint
from .exceptions import APIError, DecodeError

__all__ = [
    "BACKOFF_MAX",
    "RETRY_STATUSES",
    "Close",
    "Command",
    "Flow",
    "Place",
    "Progress",
    "ReadBody",
    "Reply",
    "Request",
    "Requests",
    "Sleep",
    "api_error_of",
    "backoff",
    "broken_message",
    "join_url",
    "json_object",
    "run_flow",
    "timeout_message",
    "unreachable_message",
]

T = TypeVar("T")
Progress = Callable[[int, int | None], None]
#: Where a body goes (see ``Transport.read_body_placed``).
Place = Callable[[memoryview, int], Sequence[memoryview] | int | None]
#: Statuses that mean "try again later": retried for GETs, and for resendable requests.
RETRY_STATUSES = frozenset({429, 502, 503, 504})
#: Longest sleep before a retry, and longest Retry-After honoured (a server may ask hours).
BACKOFF_MAX = 30.0
_EXCERPT = 300


@dataclass(frozen=True)
class Request:
    """One HTTP request a flow wants sent; its result is a :class:`Reply`.

    Attributes:
        path: An API path (``api/v1/...``), a site-relative or an absolute URL.
        body: Bytes, or a ``Chunks`` of buffers (sent in slices with progress).
        stream: Leave the body unread: the flow reads it with :class:`ReadBody`
            (or drops it with :class:`Close`).
        resend: Also retry it when its outcome is unknown (see ``Transport.request``).
    """

    method: str
    path: str
    body: Any = None
    content_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    params: Mapping[str, Any] | None = None
    stream: bool = False
    resend: bool = False


@dataclass
class Reply:
    """A 2xx answer: status, headers (case-insensitive), and the body unless streamed.

    ``raw`` is the driver's own response object, for :class:`ReadBody` and :class:`Close`.
    """

    status: int
    headers: Mapping[str, str]
    method: str
    url: str
    content: bytes | None
    raw: Any = None


@dataclass(frozen=True)
class ReadBody:
    """Read a streamed reply's body: into ``place``'s buffers (result None), else whole."""

    reply: Reply
    place: Place | None = None
    progress: Progress | None = None


@dataclass(frozen=True)
class Close:
    """Drop a streamed reply's body unread."""

    reply: Reply


@dataclass(frozen=True)
class Sleep:
    """Wait ``seconds`` before going on."""

    seconds: float


@dataclass(frozen=True)
class Requests:
    """Send ``requests`` (none streamed), at most ``width`` at once, each as soon as one
    in flight ends; the result is their replies, in order.

    The first error (of the earliest request that failed) is thrown in once the
    requests in flight end; those not yet started are then not sent.
    """

    requests: tuple[Request, ...]
    width: int


Command = Request | Requests | ReadBody | Close | Sleep
#: A protocol step: yields commands, is sent their results, returns its value.
Flow = Generator[Command, Any, T]


def run_flow(flow: Flow[T], execute: Callable[[Command], Any]) -> T:
    """Drive ``flow`` synchronously: ``execute`` each command, send back its result.

    An error ``execute`` raises is thrown into the flow at the ``yield`` that asked, so
    the protocol handles a refusal where it made the request (adding hints, say).
    """
    try:
        command = next(flow)
        while True:
            try:
                result = execute(command)
            except Exception as exc:
                command = flow.throw(exc)
            else:
                command = flow.send(result)
    except StopIteration as stop:
        value: T = stop.value
        return value


def backoff(attempt: int, retry_after: str | None, factor: float) -> float:
    """Seconds to wait before retry ``attempt`` (0-based): Retry-After when given (capped),
    else "full jitter", a uniform time in [0, exponential backoff], so many clients
    retrying after one outage spread out instead of returning in step."""
    if retry_after is not None and retry_after.strip().isdigit():
        return min(float(retry_after), BACKOFF_MAX)
    return random.uniform(0.0, min(BACKOFF_MAX, factor * 2**attempt))


def join_url(base_url: str, path: str) -> str:
    """Resolve ``path`` (API path, site-relative or absolute URL) against ``base_url``
    (which ends in ``/``); an API path is appended, never ``os.path.join``-ed."""
    if path.startswith(("http://", "https://", "/")):
        return urljoin(base_url, path)
    return base_url + path


def api_error_of(
    status: int, content: bytes, method: str, url: str, hint: str | None = None
) -> APIError:
    """Build the APIError for a non-2xx answer: its JSON detail, or a short text excerpt."""
    try:
        detail: Any = orjson.loads(content)
    except orjson.JSONDecodeError:
        detail = text_excerpt(content.decode("utf-8", "replace"))
    if hint is None and status == 404:
        hint = f"Nothing at {method} {url}: check the url and the model id"
    return APIError(status, detail, hint)


def text_excerpt(text: str) -> str:
    """An error page's gist: an HTML page's title (the stock service's 500s and 404s),
    or its text without tags, at most 300 characters."""
    title = re.search(r"<title[^>]*>(.*?)</title>", text, re.IGNORECASE | re.DOTALL)
    if title:
        text = title.group(1)
    text = re.sub(r"<[^>]+>", " ", text)
    text = " ".join(text.split())
    return text if len(text) <= _EXCERPT else text[:_EXCERPT] + "..."


def timeout_message(method: str, url: str, timeout: object) -> str:
    """The RequestTimeout message of a request that got no answer in time."""
    return (
        f"{method} {url}: no answer within the {timeout} s timeout (connect, read); raise "
        "WebClient(timeout=...) for slow services"
    )


def broken_message(method: str, url: str, cause: str) -> str:
    """The ConnectError message of a request whose connection broke after it was sent."""
    return (
        f"{method} {url}: the connection broke after the request was sent, so its outcome "
        f"is unknown ({cause}){tls_hint(url, cause)}; WebClient(retry_updates=True) resends "
        "updates safely to services that honour Idempotency-Key"
    )


def unreachable_message(method: str, url: str, base_url: str, cause: str) -> str:
    """The ConnectError message of a request that never reached the service."""
    return f"{method} {url}: cannot reach the service at {base_url}: {cause}{tls_hint(url, cause)}"


def json_object(reply: Reply, body: Any = None) -> dict[str, Any]:
    """Parse a reply (or its ``body``, read already) that must be a JSON object.

    Raises:
        DecodeError: it is not JSON, or not an object.
    """
    content = reply.content if body is None else body
    assert content is not None  # a streamed reply's body is passed in once read
    try:
        value = orjson.loads(content)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(
            f"{reply.method} {reply.url} answered {reply.status} with a body that is not "
            f"JSON: {bytes(content[:200])!r}"
        ) from exc
    if not isinstance(value, dict):
        raise DecodeError(
            f"{reply.method} {reply.url} answered a JSON {type(value).__name__}, expected an object"
        )
    return value
