"""HTTP plumbing for the client: one Session, timeouts, retries, URLs, errors, bodies.

Nothing here knows a wire format; :mod:`fma_connect.clients` decides what to send.
"""

from __future__ import annotations

import os
import random
import ssl
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import orjson
import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from ._downloads import Download, check_rest, placed_reads, rest_headers, whole_reads
from ._messages import (
    BACKOFF_MAX,
    RETRY_STATUSES,
    api_error_of,
    backoff,
    broken_message,
    join_url,
    timeout_message,
    unreachable_message,
)
from ._tls import Cert, Verify, check_cert, check_verify, ssl_context, ssl_reason
from .exceptions import (
    APIError,
    ConfigurationError,
    ConnectError,
    EncodeError,
    RequestTimeout,
    TransportError,
)
from .identity import RequestSigner
from .signing import url_with_query

__all__ = [
    "API_PREFIX",
    "DEFAULT_RETRIES",
    "DEFAULT_TIMEOUT",
    "LONG_POLL_HEADER",
    "RETRY_STATUSES",
    "SEND_SLICE",
    "Chunks",
    "JitterRetry",
    "Transport",
    "api_error",
    "dumps_json",
]

#: (connect, read) seconds. The read timeout bounds silence between bytes, not a whole
#: transfer, so large payloads are not cut off (the original client's 10 s total was).
DEFAULT_TIMEOUT: tuple[float, float] = (10.0, 120.0)
#: Attempts after the first, for what is safe to retry.
DEFAULT_RETRIES = 3
_BACKOFF_FACTOR = 0.5
_BACKOFF_MAX = BACKOFF_MAX
#: Every API path starts with this; the base URL is the service root above it.
API_PREFIX = "api/v1/"
#: The header by which a service says it can hold ``get_latest_aggregate`` (docs/ROUNDS.md).
LONG_POLL_HEADER = "FMA-Long-Poll"
Progress = Callable[[int, int | None], None]
#: Largest slice of an upload handed to the socket at once (see :class:`Chunks`).
SEND_SLICE = 1 << 20


class JitterRetry(Retry):
    """urllib3 Retry with "full jitter": sleep a uniform time in [0, exponential backoff].

    Many clients retrying after one outage then spread out instead of returning in step.
    Retry-After (429, 503) is honoured by urllib3 before this backoff applies.
    """

    def get_backoff_time(self) -> float:
        """Return a random sleep between 0 and the exponential backoff of this attempt."""
        return random.uniform(0.0, super().get_backoff_time())

    def get_retry_after(self, response: Any) -> float | None:
        """Return the server's Retry-After, capped like the backoff (a server may ask hours)."""
        seconds = super().get_retry_after(response)
        return None if seconds is None else min(seconds, _BACKOFF_MAX)


def dumps_json(value: Any) -> bytes:
    """Serialise ``value`` with orjson; numpy arrays and scalars are written natively.

    Raises:
        EncodeError: ``value`` holds something JSON cannot carry.
    """
    try:
        return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)
    except TypeError as exc:  # orjson.JSONEncodeError
        raise EncodeError(f"cannot write this as JSON: {exc}") from exc


class Chunks:
    """A request body made of buffers sent one after another, with a known length.

    requests sends a sized iterable with a Content-Length and no copies; a generator
    would be sent chunked, and a joined ``bytes`` would copy the whole payload.
    Each buffer goes out in slices of at most :data:`SEND_SLICE` bytes (views, not
    copies): the socket timeout then bounds each slice, so it limits a stalled
    upload, not a long one, and ``progress`` is called after every slice.
    """

    def __init__(self, chunks: Sequence[Any], progress: Progress | None = None) -> None:
        self._chunks = [memoryview(c).cast("B") for c in chunks]
        self._progress = progress
        self.nbytes = sum(c.nbytes for c in self._chunks)

    def __len__(self) -> int:
        return self.nbytes

    def __iter__(self) -> Iterator[memoryview]:
        sent = 0
        for chunk in self._chunks:
            for start in range(0, chunk.nbytes, SEND_SLICE):
                piece = chunk[start : start + SEND_SLICE]
                yield piece
                sent += piece.nbytes
                if self._progress is not None:
                    self._progress(sent, self.nbytes)


def api_error(response: requests.Response, hint: str | None = None) -> APIError:
    """Build the APIError for a non-2xx response: its JSON detail, or a short text excerpt."""
    request = response.request
    return api_error_of(
        response.status_code, response.content, str(request.method), str(request.url), hint
    )


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


def _check_options(session: object, headers: object, auth: object) -> None:
    if session is not None and not isinstance(session, requests.Session):
        raise ConfigurationError(
            f"session must be a requests.Session (or None for a new one), got {session!r}"
        )
    if headers is not None and not (
        isinstance(headers, Mapping)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items())
    ):
        raise ConfigurationError(
            f"headers must be a mapping of header names to str values, got {headers!r}"
        )
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


class Transport:
    """One requests.Session bound to a service's base URL.

    ``verify`` and ``cert`` are TLS's, as :mod:`fma_connect._tls` describes.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float | tuple[float, float] | None = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        session: requests.Session | None = None,
        headers: Mapping[str, str] | None = None,
        auth: Any = None,
        verify: Verify = True,
        cert: Cert | None = None,
    ) -> None:
        self.base_url = _check_url(base_url).rstrip("/") + "/"
        self.timeout = _check_timeout(timeout)
        if type(retries) is not int or retries < 0:
            raise ConfigurationError(f"retries must be an integer >= 0, got {retries!r}")
        _check_options(session, headers, auth)
        # Passed with each request only when given, so a caller's session keeps its own
        # verify/cert (and requests its REQUESTS_CA_BUNDLE) unless told otherwise.
        self.tls: dict[str, Any] = {}
        ssl_context(check_verify(verify), check_cert(cert))  # PEM files now, not at first use
        if verify is not True:
            self.tls["verify"] = os.fspath(verify) if not isinstance(verify, bool) else verify
        if cert is not None:
            self.tls["cert"] = (
                tuple(os.fspath(part) for part in cert)
                if isinstance(cert, tuple)
                else os.fspath(cert)
            )
        self._owns_session = session is None
        self.session = session if session is not None else requests.Session()
        # Sent with each request rather than set on the session, so a caller's session
        # (and other clients sharing it) are left as they were.
        self.headers = dict(headers or {})
        self.auth = auth
        self.retries = retries
        self.backoff_factor = _BACKOFF_FACTOR
        retry = JitterRetry(
            total=retries,
            connect=retries,
            read=retries,
            status=retries,
            other=0,
            allowed_methods=frozenset({"GET", "HEAD"}),
            status_forcelist=RETRY_STATUSES,
            backoff_factor=_BACKOFF_FACTOR,
            backoff_max=_BACKOFF_MAX,
            respect_retry_after_header=True,
            raise_on_status=False,
        )
        # Mounted for our base URL only, so a caller's own session keeps its other adapters.
        self.session.mount(self.base_url, HTTPAdapter(max_retries=retry))
        #: Signs each attempt (an enrolled client's key, see :meth:`sign_with`), or None.
        self.signer: RequestSigner | None = None

    def sign_with(self, signer: RequestSigner) -> None:
        """Sign every attempt of every request with ``signer`` (an enrolled client's).

        urllib3 resends a GET that broke, timed out or got 429/502/503/504 with the
        headers it was first given (the same nonce: the server would refuse it as a
        replay), so those retries move to :meth:`request`'s loop, which signs each
        attempt afresh; only a connection that never opened is retried below it (no
        byte reached the service, so nothing was spent).
        """
        self.signer = signer
        retry = JitterRetry(
            total=self.retries,
            connect=self.retries,
            read=0,
            status=0,
            other=0,
            allowed_methods=frozenset({"GET", "HEAD"}),
            backoff_factor=_BACKOFF_FACTOR,
            backoff_max=_BACKOFF_MAX,
            respect_retry_after_header=False,  # a 503's Retry-After too: request() waits
            raise_on_status=False,
        )
        self.session.mount(self.base_url, HTTPAdapter(max_retries=retry))

    def url(self, path: str) -> str:
        """Resolve ``path`` (API path, site-relative or absolute URL) against the base URL."""
        return join_url(self.base_url, path)

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

    def _send(
        self,
        method: str,
        url: str,
        body: bytes | Chunks | None,
        headers: dict[str, str],
        params: Mapping[str, Any] | None,
        stream: bool,
    ) -> requests.Response:
        if self.signer is not None:  # signed afresh for each attempt, over the query sent
            url, params = url_with_query(url, params), None
            headers = {**headers, **self.signer(method, url, {**self.headers, **headers})}
        try:
            return self.session.request(
                method,
                url,
                data=body,  # type: ignore[arg-type]  # a sized iterable of buffers is fine
                headers={**self.headers, **headers},
                auth=self.auth,
                params=params,
                timeout=self.timeout,
                stream=stream,
                allow_redirects=method == "GET",
                **self.tls,
            )
        except requests.exceptions.RetryError as exc:
            raise TransportError(
                f"{method} {url}: gave up after retries: {_root_cause(exc)}"
            ) from exc
        except (requests.Timeout, requests.ConnectionError) as exc:
            if _timed_out(exc):
                raise RequestTimeout(timeout_message(method, url, self.timeout)) from exc
            if body is not None and _sent(exc):
                raise ConnectError(broken_message(method, url, _root_cause(exc))) from exc
            raise ConnectError(
                unreachable_message(method, url, self.base_url, _root_cause(exc))
            ) from exc
        except requests.RequestException as exc:
            raise TransportError(f"{method} {url}: {type(exc).__name__}: {exc}") from exc

    def _backoff(self, attempt: int, retry_after: str | None) -> float:
        """Seconds to wait before a resend: Retry-After when given, else full jitter."""
        return backoff(attempt, retry_after, self.backoff_factor)

    def read_body(self, response: requests.Response, progress: Progress | None = None) -> Any:
        """Read a streamed response into one writable buffer, with no intermediate copies.

        With a Content-Length (and no Content-Encoding) the body is read straight from
        the socket into a fresh buffer of that size (returned as a memoryview);
        otherwise it is collected into a ``bytearray``. Either is writable, so binary
        codecs decode to writable arrays that view it.

        A body the service offers in ranges (``Accept-Ranges: bytes`` and a strong
        ``ETag``) that breaks off is resumed where it stopped (``retries`` times in a
        row without progress at most; never with ``retries=0``): ``Range:
        bytes=<received>-`` with ``If-Range: <ETag>``, into the same buffer.
        What is received is then checked whole by the codec that decodes it.

        Raises:
            DecodeError: the body ended before its Content-Length.
            RequestTimeout / ConnectError: the transfer stalled or broke (for good).
        """
        return self.read_body_placed(response, None, progress)

    def read_body_placed(
        self,
        response: requests.Response,
        place: Callable[[memoryview, int], Sequence[memoryview] | int | None] | None,
        progress: Progress | None = None,
    ) -> Any:
        """Read a streamed response into where ``place`` says, else as :meth:`read_body`.

        Args:
            place: Called with the body's first bytes and its length (a Content-Length
                without Content-Encoding is needed; else the body is read whole). It
                returns the buffers that hold the body, in order, from its first byte
                (they may view the bytes it was given); or how many first bytes it needs
                to tell; or None: read the body whole. It may raise.

        Returns:
            None when the body went into ``place``'s buffers, else the whole body.

        Raises:
            As :meth:`read_body`, and what ``place`` raises.
        """
        length = response.headers.get("Content-Length")
        try:
            if length is None or not length.isdigit() or response.headers.get("Content-Encoding"):
                buffer = bytearray()
                for chunk in response.iter_content(1 << 20):
                    buffer += chunk
                    if progress is not None:
                        progress(len(buffer), None)
                return buffer
            size, etag = int(length), response.headers.get("ETag", "")
            download = Download(
                response,
                size,
                lambda broken, start: self._rest(broken, start, size, etag),
                self.retries,
                lambda attempt: self._backoff(attempt, None),
                progress,
            )
            try:
                reads = whole_reads(size) if place is None else placed_reads(size, place)
                return download.run(reads)
            finally:
                download.close()
        except requests.Timeout as exc:
            raise RequestTimeout(f"download of {response.url} stalled: {_root_cause(exc)}") from exc
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise ConnectError(f"download of {response.url} broke: {_root_cause(exc)}") from exc
        finally:
            response.close()

    def close(self) -> None:
        """Close the session if this transport created it."""
        if self._owns_session:
            self.session.close()

    def _rest(
        self, broken: requests.Response, start: int, length: int, etag: str
    ) -> requests.Response:
        """Ask for bytes ``start`` to the end of the body ``broken`` was sending.

        Raises:
            ConnectError / RequestTimeout: the service could not be reached.
            TransportError: it answered something else than those bytes of the same
                representation.
        """
        request = broken.request
        headers = rest_headers(request.headers, start, etag)
        assert request.url is not None  # a sent request has its URL
        rest = self._send("GET", request.url, None, headers, None, True)
        try:
            check_rest(
                request.url, rest.status_code, rest.headers.get("Content-Range"), start, length
            )
        except TransportError:
            rest.close()
            raise
        return rest
