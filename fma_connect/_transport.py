"""HTTP plumbing for the client: one Session, timeouts, retries, URLs, errors, bodies.

Nothing here knows a wire format; :mod:`fma_connect.clients` decides what to send.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import urljoin

import orjson
import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from .exceptions import APIError, ConnectError, DecodeError, RequestTimeout, TransportError

__all__ = [
    "DEFAULT_RETRIES",
    "DEFAULT_TIMEOUT",
    "RETRY_STATUSES",
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
#: Statuses that mean "try again later": retried for GETs, and for resendable requests.
RETRY_STATUSES = frozenset({429, 502, 503, 504})
_BACKOFF_FACTOR = 0.5
_BACKOFF_MAX = 30.0
_EXCERPT = 300
Progress = Callable[[int, int | None], None]


class JitterRetry(Retry):
    """urllib3 Retry with "full jitter": sleep a uniform time in [0, exponential backoff].

    Many clients retrying after one outage then spread out instead of returning in step.
    Retry-After (429, 503) is honoured by urllib3 before this backoff applies.
    """

    def get_backoff_time(self) -> float:
        """Return a random sleep between 0 and the exponential backoff of this attempt."""
        return random.uniform(0.0, super().get_backoff_time())


def dumps_json(value: Any) -> bytes:
    """Serialise ``value`` with orjson; numpy arrays and scalars are written natively."""
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)


class Chunks:
    """A request body made of buffers sent one after another, with a known length.

    requests sends a sized iterable with a Content-Length and no copies; a generator
    would be sent chunked, and a joined ``bytes`` would copy the whole payload.
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
            yield chunk
            sent += chunk.nbytes
            if self._progress is not None:
                self._progress(sent, self.nbytes)


def api_error(response: requests.Response, hint: str | None = None) -> APIError:
    """Build the APIError for a non-2xx response: its JSON detail, or a short text excerpt."""
    try:
        detail: Any = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        detail = _text_excerpt(response.content.decode("utf-8", "replace"))
    return APIError(response.status_code, detail, hint)


def _text_excerpt(text: str) -> str:
    # An HTML error page (the stock service's 500s and 404s): its title says the most.
    title = re.search(r"<title[^>]*>(.*?)</title>", text, re.IGNORECASE | re.DOTALL)
    if title:
        text = title.group(1)
    text = re.sub(r"<[^>]+>", " ", text)
    text = " ".join(text.split())
    return text if len(text) <= _EXCERPT else text[:_EXCERPT] + "..."


class Transport:
    """One requests.Session bound to a service's base URL."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float | tuple[float, float] | None = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        session: requests.Session | None = None,
        headers: Mapping[str, str] | None = None,
        auth: Any = None,
    ) -> None:
        self.base_url = base_url.rstrip("/") + "/"
        self.timeout = timeout
        self._owns_session = session is None
        self.session = session if session is not None else requests.Session()
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
        if headers:
            self.session.headers.update(headers)
        if auth is not None:
            self.session.auth = auth

    def url(self, path: str) -> str:
        """Resolve ``path`` (API path, site-relative or absolute URL) against the base URL."""
        if path.startswith(("http://", "https://", "/")):
            return urljoin(self.base_url, path)
        return self.base_url + path

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
        attempts = self.retries + 1 if resend and method != "GET" else 1
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
        try:
            return self.session.request(
                method,
                url,
                data=body,  # type: ignore[arg-type]  # a sized iterable of buffers is fine
                headers=headers,
                params=params,
                timeout=self.timeout,
                stream=stream,
                allow_redirects=method == "GET",
            )
        except requests.exceptions.RetryError as exc:
            raise TransportError(f"{method} {url}: gave up after retries: {exc}") from exc
        except requests.Timeout as exc:
            raise RequestTimeout(
                f"{method} {url}: no answer within the {self.timeout} s timeout (connect, read); "
                "raise WebClient(timeout=...) for slow services"
            ) from exc
        except requests.ConnectionError as exc:
            raise ConnectError(
                f"{method} {url}: cannot reach the service at {self.base_url}: {exc}"
            ) from exc

    def _backoff(self, attempt: int, retry_after: str | None) -> float:
        """Seconds to wait before a resend: Retry-After when given, else full jitter."""
        if retry_after is not None and retry_after.strip().isdigit():
            return min(float(retry_after), _BACKOFF_MAX)
        return random.uniform(0.0, min(_BACKOFF_MAX, self.backoff_factor * 2**attempt))

    def read_body(self, response: requests.Response, progress: Progress | None = None) -> bytearray:
        """Read a streamed response into one writable buffer, with no intermediate copies.

        Raises:
            DecodeError: the body ended before its Content-Length.
            RequestTimeout / ConnectError: the transfer stalled or broke.
        """
        length = response.headers.get("Content-Length")
        try:
            if length is not None and not response.headers.get("Content-Encoding"):
                return _read_exact(response, int(length), progress)
            buffer = bytearray()
            for chunk in response.iter_content(1 << 20):
                buffer += chunk
                if progress is not None:
                    progress(len(buffer), None)
            return buffer
        except requests.Timeout as exc:
            raise RequestTimeout(f"download of {response.url} stalled: {exc}") from exc
        except (requests.ConnectionError, OSError) as exc:
            raise ConnectError(f"download of {response.url} broke: {exc}") from exc
        finally:
            response.close()

    def close(self) -> None:
        """Close the session if this transport created it."""
        if self._owns_session:
            self.session.close()


def _read_exact(response: requests.Response, length: int, progress: Progress | None) -> bytearray:
    buffer = bytearray(length)
    view = memoryview(buffer)
    got = 0
    while got < length:
        n = response.raw.readinto(view[got : got + (64 << 20)])
        if not n:
            raise DecodeError(
                f"response from {response.url} is truncated: got {got} of {length} bytes"
            )
        got += n
        if progress is not None:
            progress(got, length)
    return buffer
