"""Reading a streamed response body into memory that is already there, resuming breaks.

:class:`Download` reads a body of known length in order, from the socket straight into
windows of the caller's buffers (one buffer, or the pieces a codec's
:class:`~fma_connect.codecs.layout.Layout` names), and when the connection breaks it
asks for the rest with a range request where the service allows it.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Generator, Mapping, Sequence

import numpy as np
import requests
import urllib3

from ._messages import Progress
from .exceptions import ConnectError, DecodeError, RequestTimeout, TransportError

__all__ = [
    "Download",
    "Reads",
    "Scatter",
    "check_rest",
    "placed_reads",
    "rest_headers",
    "resumable",
    "whole_reads",
    "window_of",
]

#: Largest read into a buffer at once: between two progress calls, and what a broken
#: read loses (a read cut mid-slice counts none of its bytes).
RECV_SLICE = 1 << 20
#: ``resend(broken, start)``: the rest of the body from byte ``start``, or an error.
Resend = Callable[[requests.Response, int], requests.Response]
#: Where a body goes (see ``Transport.read_body_placed``).
Place = Callable[[memoryview, int], Sequence[memoryview] | int | None]
#: The first bytes of a body read before asking where the rest goes (``placed_reads``).
HEAD = 64 << 10
#: A body's reading plan with no I/O: it yields ``(window, until)``, "read the body up to
#: byte ``until``, byte ``at`` going to ``window(at)``", and returns the body (a buffer)
#: or None when it went into placed buffers. Both clients' downloads run it.
Reads = Generator[tuple[Callable[[int], memoryview], int], None, memoryview | None]


def resumable(headers: Mapping[str, str]) -> bool:
    """Whether a body can be resumed by ranges: ``Accept-Ranges: bytes`` and a strong ETag
    (weak validators do not promise the same bytes, RFC 9110)."""
    ranged = headers.get("Accept-Ranges", "").strip().lower() == "bytes"
    return ranged and headers.get("ETag", "").startswith('"')


def rest_headers(sent: Mapping[str, str], start: int, etag: str) -> dict[str, str]:
    """The headers of a request for a body's bytes from ``start`` on: the first request's,
    with ``Range`` and ``If-Range`` (so a changed representation comes back whole, 200)."""
    headers = {
        name: value
        for name, value in sent.items()
        if name.lower() not in ("content-length", "range", "if-range")
    }
    headers.update({"Range": f"bytes={start}-", "If-Range": etag})
    return headers


def check_rest(url: str, status: int, content_range: str | None, start: int, length: int) -> None:
    """Refuse an answer to a range request that is not the rest of the same body.

    Raises:
        TransportError: it is not ``206`` with the ``Content-Range`` asked for.
    """
    if status != 206 or content_range != f"bytes {start}-{length - 1}/{length}":
        raise TransportError(
            f"download of {url} broke at byte {start} of {length}, and the service "
            f"answered {status} ({content_range!r}) to a request for the rest: the weights "
            "may have changed meanwhile; fetch again"
        )


def whole_reads(length: int, head: memoryview | None = None) -> Reads:
    """Read a whole body into one fresh buffer, after the ``head`` read so far."""
    view = np.empty(length, np.uint8).data
    done = 0 if head is None else head.nbytes
    if head is not None:
        view[:done] = head
    yield window_of(view), length
    return view


def placed_reads(length: int, place: Place) -> Reads:
    """Read a body where ``place`` says (returns None), or whole when it says None."""
    head = np.empty(min(length, HEAD), np.uint8).data
    while True:
        yield window_of(head), head.nbytes
        placed = place(head, length)
        if not isinstance(placed, int):
            break
        if not head.nbytes < placed <= length:
            raise ValueError(f"asked for {placed} first bytes after {head.nbytes}, of {length}")
        grown = np.empty(placed, np.uint8).data
        grown[: head.nbytes] = head
        head = grown
    if placed is None:
        return (yield from whole_reads(length, head))
    scatter = Scatter(placed)
    if scatter.nbytes != length:
        raise ValueError(f"placed {scatter.nbytes} bytes of a body of {length}")
    scatter.fill(head)
    yield scatter.window, length
    return None


class Download:
    """A response body of ``length`` bytes, read in order into the caller's windows.

    A body the service offers in ranges (``Accept-Ranges: bytes`` and a strong ``ETag``)
    that breaks off is resumed where it stopped, ``retries`` times in a row without
    progress at most (never with ``retries=0``): ``resend`` asks for the rest with
    ``Range`` and ``If-Range`` and checks the answer.

    Args:
        response: The streamed response, its body not read yet.
        length: Its Content-Length.
        resend: Gets the rest of the body after a break.
        retries: Breaks in a row that brought nothing, after which the error is raised.
        backoff: Seconds to sleep before the n-th attempt in a row.
        progress: Called with (bytes so far, length).
    """

    def __init__(
        self,
        response: requests.Response,
        length: int,
        resend: Resend,
        retries: int,
        backoff: Callable[[int], float],
        progress: Progress | None = None,
    ) -> None:
        self.response = response
        self.length = length
        #: Bytes read so far.
        self.got = 0
        self._resend, self._retries, self._backoff = resend, retries, backoff
        self._progress = progress
        self._resumable = resumable(response.headers)

    def read(self, window: Callable[[int], memoryview], until: int) -> None:
        """Read the body up to byte ``until``; ``window(at)`` is where byte ``at`` goes.

        A window may be shorter than what is left (a read fills at most one window) but
        never empty before ``until``.

        Raises:
            DecodeError: the body ended before its Content-Length.
            ConnectError / RequestTimeout / TransportError: it broke for good.
        """
        stalls = 0
        while True:
            before = self.got
            error = self._read(window, until)
            if error is None:
                return
            self.response.close()
            # Retries count the breaks that brought nothing: a link that keeps dropping
            # but moves the body on is followed to the end (retries=0: never resumed).
            stalls = 0 if self.got > before else stalls + 1
            while True:
                if not self._resumable or not self._retries or stalls > self._retries:
                    raise error
                time.sleep(self._backoff(stalls))
                try:
                    self.response = self._resend(self.response, self.got)
                    break
                except (ConnectError, RequestTimeout) as exc:  # not reachable yet
                    error, stalls = exc, stalls + 1

    def run(self, reads: Reads) -> memoryview | None:
        """Carry out a reading plan (:func:`whole_reads`, :func:`placed_reads`)."""
        try:
            window, until = next(reads)
            while True:
                self.read(window, until)
                window, until = reads.send(None)
        except StopIteration as stop:
            result: memoryview | None = stop.value
            return result

    def close(self) -> None:
        """Close the response (what is left of the body is not read)."""
        self.response.close()

    def _read(self, window: Callable[[int], memoryview], until: int) -> Exception | None:
        """Read on from :attr:`got`; return why the body stopped before ``until``, or None."""
        readinto = socket_readinto(self.response)
        try:
            while self.got < until:
                view = window(self.got)
                n = readinto(view[: min(RECV_SLICE, until - self.got)])
                if not n:
                    return DecodeError(
                        f"response from {self.response.url} is truncated: got {self.got} "
                        f"of {self.length} bytes"
                    )
                self.got += n
                if self._progress is not None:
                    self._progress(self.got, self.length)
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            return exc
        return None


class Scatter:
    """Consecutive buffers that together hold a body: where each of its bytes goes."""

    def __init__(self, segments: Sequence[memoryview]) -> None:
        self._segments = [segment for segment in segments if segment.nbytes]
        self._starts = []
        at = 0
        for segment in self._segments:
            self._starts.append(at)
            at += segment.nbytes
        #: The body's length.
        self.nbytes = at

    def window(self, at: int) -> memoryview:
        """The rest of the buffer that holds byte ``at``, from there."""
        i = bisect.bisect_right(self._starts, at) - 1
        return self._segments[i][at - self._starts[i] :]

    def fill(self, data: memoryview) -> None:
        """Copy ``data`` (the body's first bytes) to where those bytes go."""
        at = 0
        while at < data.nbytes:
            view = self.window(at)
            n = min(view.nbytes, data.nbytes - at)
            view[:n] = data[at : at + n]
            at += n


def window_of(view: memoryview) -> Callable[[int], memoryview]:
    """The :meth:`Download.read` windows of one buffer: from byte ``at`` to its end."""
    return lambda at: view[at:]


def socket_readinto(response: requests.Response) -> Callable[[memoryview], int]:
    """The fastest ``readinto`` for a streamed body that urllib3 has not started reading.

    urllib3's own ``readinto`` reads into a temporary ``bytes`` and copies it; the
    ``http.client`` response underneath reads from the socket into our buffer.
    """
    raw = response.raw
    inner = getattr(raw, "_fp", None)
    untouched = getattr(raw, "_fp_bytes_read", None) == 0 and not getattr(
        raw, "_decoded_buffer", None
    )
    if inner is not None and untouched and hasattr(inner, "readinto"):
        readinto: Callable[[memoryview], int] = inner.readinto
        return readinto

    def fallback(view: memoryview) -> int:
        data = raw.read(view.nbytes, decode_content=False)
        view[: len(data)] = data
        return len(data)

    return fallback
