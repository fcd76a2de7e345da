"""Reading a streamed response body into memory that is already there, resuming breaks.

:class:`Download` reads a body of known length in order, from the socket straight into
windows of the caller's buffers (one buffer, or the pieces a codec's
:class:`~fma_connect.codecs.layout.Layout` names), and when the connection breaks it
asks for the rest with a range request where the service allows it.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Sequence

import requests
import urllib3

from .exceptions import ConnectError, DecodeError, RequestTimeout

__all__ = ["Download", "Scatter", "window_of"]

Progress = Callable[[int, int | None], None]
#: Largest read into a buffer at once: between two progress calls, and what a broken
#: read loses (a read cut mid-slice counts none of its bytes).
RECV_SLICE = 1 << 20
#: ``resend(broken, start)``: the rest of the body from byte ``start``, or an error.
Resend = Callable[[requests.Response, int], requests.Response]


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
        etag = response.headers.get("ETag", "")
        ranged = response.headers.get("Accept-Ranges", "").strip().lower() == "bytes"
        self._resumable = ranged and etag.startswith('"')  # strong validators only (RFC 9110)

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
