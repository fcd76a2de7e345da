"""Reading the asyncio transport's streamed bodies (a part of
:class:`~._aio_transport.AsyncTransport`).

:class:`AsyncBodyReading` reads a streamed reply's body as ``Transport.read_body_placed``
does: one buffer, or the caller's arrays, filled in arrival-sized pieces, and resumed by
range requests where the service allows it (:class:`_Download`), sent as its
:class:`~._aio_transport_session.AsyncTransportSession` sends any attempt.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import aiohttp

from ._aio_transport_errors import _cause, _Unsent
from ._aio_transport_session import AsyncTransportSession
from ._downloads import (
    RECV_SLICE,
    Place,
    Reads,
    check_rest,
    placed_reads,
    rest_headers,
    resumable,
    whole_reads,
)
from ._messages import Progress, Reply, backoff
from .exceptions import ConnectError, DecodeError, FMAConnectError, RequestTimeout, TransportError

__all__ = ["AsyncBodyReading"]


@dataclass
class _Streamed:
    """A streamed reply's aiohttp response and the headers its request was sent with
    (asked again, with a range, when the body breaks off)."""

    response: aiohttp.ClientResponse
    headers: dict[str, str]


class AsyncBodyReading(AsyncTransportSession):
    """Streamed bodies of an :class:`~._aio_transport_session.AsyncTransportSession` (a
    part of ``AsyncTransport``)."""

    async def read_body_placed(
        self, reply: Reply, place: Place | None, progress: Progress | None = None
    ) -> Any:
        """Read a streamed reply's body as ``Transport.read_body_placed`` does.

        Returns:
            None when the body went into ``place``'s buffers, else the whole body
            (a writable buffer).

        Raises:
            DecodeError: the body ended before its Content-Length.
            RequestTimeout / ConnectError / TransportError: it stalled or broke for good.
        """
        streamed: _Streamed = reply.raw
        response = streamed.response
        length = response.headers.get("Content-Length")
        download: _Download | None = None
        try:
            if length is None or not length.isdigit() or response.headers.get("Content-Encoding"):
                buffer = bytearray()
                async for chunk in response.content.iter_any():
                    buffer += chunk
                    if progress is not None:
                        progress(len(buffer), None)
                return buffer
            size = int(length)
            download = _Download(self, streamed, reply.url, size, progress)
            reads = whole_reads(size) if place is None else placed_reads(size, place)
            return await download.run(reads)
        except FMAConnectError:
            raise
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise RequestTimeout(f"download of {reply.url} stalled: {_cause(exc)}") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise ConnectError(f"download of {reply.url} broke: {_cause(exc)}") from exc
        finally:
            (download.streamed.response if download else response).release()

    async def rest(self, streamed: _Streamed, url: str, start: int, length: int) -> _Streamed:
        """Ask for bytes ``start`` to the end of the body ``streamed`` was sending.

        Raises:
            ConnectError / RequestTimeout: the service could not be reached.
            TransportError: it answered something else than those bytes of the same
                representation.
        """
        etag = streamed.response.headers.get("ETag", "")
        headers = rest_headers(streamed.headers, start, etag)
        try:
            rest = await self._send("GET", url, None, headers, None)
        except _Unsent as unsent:
            raise unsent.error from unsent.__cause__
        try:
            check_rest(url, rest.status, rest.headers.get("Content-Range"), start, length)
        except TransportError:
            rest.release()
            raise
        return _Streamed(rest, headers)


class _Download:
    """A body of ``length`` bytes read in order into windows; resumed as ``Download`` is
    (the same rule: ``retries`` breaks in a row without progress at most)."""

    def __init__(
        self,
        transport: AsyncBodyReading,
        streamed: _Streamed,
        url: str,
        length: int,
        progress: Progress | None,
    ) -> None:
        self.transport, self.streamed, self.url, self.length = transport, streamed, url, length
        self.got = 0
        self._progress = progress
        self._pending = memoryview(b"")
        self._resumable = resumable(streamed.response.headers)

    async def run(self, reads: Reads) -> memoryview | None:
        """Carry out a reading plan (``whole_reads``, ``placed_reads``)."""
        try:
            window, until = next(reads)
            while True:
                await self.read(window, until)
                window, until = reads.send(None)
        except StopIteration as stop:
            result: memoryview | None = stop.value
            return result

    async def read(self, window: Any, until: int) -> None:
        """Read the body up to byte ``until`` into ``window(at)``, resuming breaks."""
        retries = self.transport.retries
        stalls = 0
        while True:
            before = self.got
            error = await self._read(window, until)
            if error is None:
                return
            self.streamed.response.release()
            # Retries count the breaks that brought nothing (retries=0: never resumed).
            stalls = 0 if self.got > before else stalls + 1
            while True:
                if not self._resumable or not retries or stalls > retries:
                    raise error
                await asyncio.sleep(backoff(stalls, None, self.transport.backoff_factor))
                try:
                    self.streamed = await self.transport.rest(
                        self.streamed, self.url, self.got, self.length
                    )
                    self._pending = memoryview(b"")
                    break
                except (ConnectError, RequestTimeout) as exc:  # not reachable yet
                    error, stalls = exc, stalls + 1

    async def _read(self, window: Any, until: int) -> BaseException | None:
        """Read on from ``got``; return why the body stopped before ``until``, or None."""
        content = self.streamed.response.content
        try:
            while self.got < until:
                view = window(self.got)[: min(RECV_SLICE, until - self.got)]
                if not self._pending.nbytes:
                    chunk = await content.readany()
                    if not chunk:
                        return DecodeError(
                            f"response from {self.url} is truncated: got {self.got} "
                            f"of {self.length} bytes"
                        )
                    self._pending = memoryview(chunk)
                n = min(view.nbytes, self._pending.nbytes)
                view[:n] = self._pending[:n]
                self._pending = self._pending[n:]
                self.got += n
                if self._progress is not None:
                    self._progress(self.got, self.length)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            return exc
        return None
