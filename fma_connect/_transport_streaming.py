"""Reading the requests transport's streamed bodies (a part of :class:`~._transport.Transport`).

:class:`BodyReading` reads a streamed response into one buffer, or into the buffers a
codec places it in, with no intermediate copies, and resumes a body that breaks off by
range requests where the service allows it (:class:`~fma_connect._downloads.Download`),
sent as its :class:`~._transport_session.TransportSession` sends any attempt.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import requests
import urllib3

from ._downloads import Download, check_rest, placed_reads, rest_headers, whole_reads
from ._transport_bodies import Progress
from ._transport_errors import _root_cause
from ._transport_session import TransportSession
from .exceptions import ConnectError, RequestTimeout, TransportError

__all__ = ["BodyReading"]


class BodyReading(TransportSession):
    """Streamed bodies of a :class:`~._transport_session.TransportSession` (a part of
    ``Transport``)."""

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
