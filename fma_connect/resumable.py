"""The client side of resumable, content-addressed uploads (docs/UPLOADS.md).

:func:`upload` sends an encoded payload in chunks: it announces the chunks' BLAKE3
digests, sends only the chunks the service says it lacks (each PUT is idempotent, so a
broken one is simply sent again), and completes the upload. A restarted client that
sends the same bytes again gets the same upload back and resumes it; chunks the service
holds from an earlier update of the model are never sent.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from typing import Any

import blake3
import orjson

from ._messages import Flow, Progress, Reply, Request
from ._transport import Chunks, dumps_json
from .exceptions import APIError, DecodeError, TransportError

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_IN_FLIGHT",
    "DEFAULT_RESUMABLE_FROM",
    "MAX_CHUNK",
    "MAX_CHUNKS",
    "MAX_IN_FLIGHT",
    "MIN_CHUNK",
    "RESUMABLE_HEADER",
    "upload_flow",
]

#: The header of ``OPTIONS /model_updates/`` that names where uploads start.
RESUMABLE_HEADER = "FMA-Resumable-Uploads"
#: Payloads of at least this many bytes go in chunks where the service offers it.
DEFAULT_RESUMABLE_FROM = 32 << 20
#: The chunk size (larger for payloads that would need more than 4096 chunks): what a
#: cut connection costs at most, and the grain at which unchanged bytes are not resent.
DEFAULT_CHUNK_SIZE = 8 << 20
#: The chunk sizes the protocol allows, and the most chunks an upload may have.
MIN_CHUNK = 64 << 10
MAX_CHUNK = 64 << 20
MAX_CHUNKS = 4096
#: Completions that may find chunks missing or damaged before the upload gives up.
_ROUNDS = 3
#: Chunks in flight at once by default, each on a connection of its own, and the most
#: allowed: while the service checks and records one, the others arrive, and on a
#: distant service a round trip per chunk is not spent idle. Measured
#: (docs/PERFORMANCE.md): through a 1 Gbit/s link with a 50 ms round trip, 256 MiB went
#: at 59 MB/s one at a time, 84-88 with two, 103 with four; next to the server, whose
#: CPU then bounds the upload, one at a time cost it the least CPU.
DEFAULT_IN_FLIGHT = 4
MAX_IN_FLIGHT = 16
_OCTETS = "application/octet-stream"
_JSON = "application/json"

#: Sends one request as the client (its errors and hints): ``reply = yield from call(r)``.
Call = Callable[[Request], Flow[Reply]]
#: Sends several, ``width`` at once: ``replies = yield from call_all(requests, width)``.
CallAll = Callable[[Sequence[Request], int], Flow[list[Reply]]]


def chunk_size_for(size: int, preferred: int = DEFAULT_CHUNK_SIZE) -> int:
    """The chunk size for a payload of ``size`` bytes (at most 4096 chunks)."""
    return max(preferred, math.ceil(size / MAX_CHUNKS))


def split(payload: Sequence[Any], chunk_size: int) -> list[list[memoryview]]:
    """A payload's buffers cut into chunks of ``chunk_size`` bytes: views, never copies."""
    chunks: list[list[memoryview]] = [[]]
    room = chunk_size
    for buffer in payload:
        view = memoryview(buffer).cast("B")
        while view.nbytes:
            if room == 0:
                chunks.append([])
                room = chunk_size
            piece, view = view[:room], view[room:]
            chunks[-1].append(piece)
            room -= piece.nbytes
    return chunks if chunks[0] else []


def digest(pieces: Sequence[memoryview]) -> str:
    """The hex BLAKE3 digest of a chunk's pieces."""
    # Every chunk is hashed before the first byte goes, the network idle meanwhile: on
    # as many cores as help (BLAKE3's tree splits a chunk across them).
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    for piece in pieces:
        hasher.update(piece)
    return hasher.hexdigest()


def upload_flow(
    call: Call,
    call_all: CallAll,
    uploads_path: str,
    payload: Sequence[Any],
    *,
    media_type: str,
    fields: dict[str, Any],
    headers: dict[str, str],
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    in_flight: int = DEFAULT_IN_FLIGHT,
    progress: Progress | None = None,
) -> Flow[Reply]:
    """Send ``payload`` as a resumable upload; return the completing reply.

    A flow of :mod:`fma_connect._messages` (no I/O here): both clients run it.

    Args:
        call: Sends one request (the client protocol's ``call``: its errors and hints).
        call_all: Sends several at once (the client protocol's ``call_all``): the chunks.
        uploads_path: Where uploads start (the service's ``FMA-Resumable-Uploads``).
        payload: The encoded update's buffers.
        media_type: Its codec's media type.
        fields: The update fields (``federated_model``, ``base_aggregate``...).
        headers: The client's headers (its ``CLIENT-UUID``).
        chunk_size: The preferred chunk size.
        in_flight: How many chunks go at once.
        progress: Called with ``(bytes the service holds, total)`` as chunks go out
            (from the thread that sends one, one call at a time); bytes it held
            already count from the start.

    Raises:
        APIError: the service refused the upload or the update.
        TransportError: the service could not be reached after the transport's retries
            (the upload stays open: sending the same update again resumes it).
    """
    size = sum(memoryview(buffer).nbytes for buffer in payload)
    chunk_size = chunk_size_for(size, chunk_size)
    chunks = split(payload, chunk_size)
    manifest = {
        **{k: v for k, v in fields.items() if v is not None},
        "media_type": media_type,
        "size": size,
        "chunk_size": chunk_size,
        "chunks": [digest(pieces) for pieces in chunks],
    }
    state = yield from _open(call, uploads_path, manifest, headers)
    shown = _Monotonic(progress, size) if progress is not None else None
    for _ in range(_ROUNDS):
        if shown is not None:
            shown.start(state["received_bytes"])
        yield from call_all(
            [
                Request(
                    "PUT",
                    f"{uploads_path}{state['id']}/chunks/{index}/",
                    Chunks(chunks[index], None if shown is None else shown.chunk(index)),
                    _OCTETS,
                    headers,
                    resend=True,  # a chunk is idempotent: the same bytes at the same place
                )
                for index in state["missing"]
            ],
            in_flight,
        )
        try:
            return (
                yield from call(
                    Request(
                        "POST",
                        f"{uploads_path}{state['id']}/complete/",
                        headers=headers,
                        resend=True,  # completing twice answers the same update
                    )
                )
            )
        except APIError as exc:
            if exc.status_code != 409 or not isinstance(exc.detail, dict):
                raise
            if "missing" not in exc.detail:
                raise
            # Chunks found damaged or lost (a server crash): send those again.
            state = {**state, "missing": exc.detail["missing"]}
            state["received_bytes"] = size - sum(
                sum(p.nbytes for p in chunks[i]) for i in state["missing"]
            )
    raise TransportError(
        f"upload {state['id']} still lacked chunks after {_ROUNDS} completions; "
        "send the update again to resume it"
    )


def _open(
    call: Call, uploads_path: str, manifest: dict[str, Any], headers: dict[str, str]
) -> Flow[dict[str, Any]]:
    """Announce the upload (the same manifest finds the same open upload again)."""
    reply = yield from call(
        Request("POST", uploads_path, dumps_json(manifest), _JSON, headers, resend=True)
    )
    try:
        state = orjson.loads(reply.content or b"")
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"POST {reply.url} answered a body that is not JSON: {exc}") from exc
    if not isinstance(state, dict):
        raise DecodeError(f"POST {reply.url} answered {state!r}, expected a JSON object")
    return state


class _Monotonic:
    """Reports progress that never goes back: the bytes the service holds, as counted
    from the start, and each chunk in flight's bytes sent so far (a chunk sent again
    counts once, not from its own start again). Chunks report from the threads that
    send them: one report at a time."""

    def __init__(self, progress: Progress, total: int) -> None:
        self._progress = progress
        self._total = total
        self._shown = -1
        self._done = 0
        self._sent: dict[int, int] = {}
        self._lock = threading.Lock()

    def start(self, done: int) -> None:
        """The service holds ``done`` bytes (a completion's count): chunks go out now."""
        with self._lock:
            self._done, self._sent = done, {}
            self._show(done)

    def chunk(self, index: int) -> Progress:
        """The callback of chunk ``index``'s body."""
        return lambda sent, _: self._add(index, sent)

    def _add(self, index: int, sent: int) -> None:
        with self._lock:
            before = self._sent.get(index, 0)
            if sent > before:
                self._sent[index] = sent
                self._done += sent - before
                self._show(self._done)

    def _show(self, done: int) -> None:
        if done > self._shown:
            self._shown = done
            self._progress(done, self._total)
