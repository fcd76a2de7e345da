"""Weights on the server's wire: decoding uploads, storing tensors, answering per ``Accept``.

Stored blobs keep the codec they arrived in (or, for aggregates, see
:func:`~.weights_storage.result_codec`). An answer is written in the binary codec the
request's ``Accept`` prefers, else as JSON: plain layer lists, as the stock service
answers and the original client reads, unless the request names a JSON-native codec in
a ``codec`` parameter, e.g. ``Accept: application/json; codec=npz-b64`` for the tagged
``npz-b64`` object, which keeps names and dtypes.

The parts: :mod:`.weights_storage` decodes uploads, stores tensors and loads them;
:mod:`.weights_negotiation` reads ``Accept`` (the codec, and the bases a delta is asked
against) and looks up an aggregate's stored sparse step. The answers are built here.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, NamedTuple

import anyio
import orjson
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from ..codecs.base import Codec, Tensors
from ..codecs.context import CodecContext, MissingBaseError
from ..exceptions import DecodeError, EncodeError, UnknownCodecError
from ..registry import CodecRegistry
from . import jsonstream
from .blobs import CHUNK, BlobStore
from .errors import HTTPError, detail
from .store_core import Row
from .weights_negotiation import (
    JSON,
    NOT_AN_AGGREGATE,
    NotAnAggregate,
    StoredStep,
    downstream_bases,
    negotiate,
)
from .weights_storage import load

__all__ = ["META_HEADER", "weights_response"]

#: Response header with the JSON fields of an answer whose body is binary weights.
META_HEADER = "FMA-Meta"


class _ClosingResponse(StreamingResponse):
    """A streamed answer that stops when the client goes away, then closes its chunks.

    Starlette's StreamingResponse cancels the body's task when the client goes away: the
    cancelled frames, which hold the chunk being sent, then wait in a reference cycle for
    the garbage collector, and a chunk viewing a stored blob keeps the blob's map and a
    descriptor (see :class:`~.blobs.BlobStream`) until then. Here the body is told
    instead, and stops at its next chunk (the server's ``send`` returns at once when the
    client has gone); its iterator is closed when the answer ends, however it ends.
    Starlette's ``__call__`` still runs both, so an error keeps its type.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._gone, self._done = anyio.Event(), anyio.Event()
        await super().__call__(scope, receive, send)

    async def listen_for_disconnect(self, receive: Receive) -> None:
        """Tell the body the client went away; return (Starlette cancels it) once it stops."""
        await super().listen_for_disconnect(receive)
        self._gone.set()
        await self._done.wait()

    async def stream_response(self, send: Send) -> None:
        """Starlette's, but for stopping when told to and closing the chunks' iterator."""
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            async for chunk in self.body_iterator:
                if self._gone.is_set():
                    return
                body = (
                    chunk if isinstance(chunk, bytes | memoryview) else chunk.encode(self.charset)
                )
                await send({"type": "http.response.body", "body": body, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            self._done.set()
            await _aclose(self.body_iterator)


def weights_response(
    blobs: BlobStore,
    blob: Row,
    registry: CodecRegistry,
    accept: str | None,
    *,
    field: str | None = None,
    meta: Mapping[str, Any] | None = None,
    context: CodecContext | None = None,
    step: StoredStep | None = None,
    aggregate: int | NotAnAggregate | None = NOT_AN_AGGREGATE,
    ranges: Mapping[str, str] | None = None,
) -> StreamingResponse:
    """Answer with a blob's weights, streamed, in the codec ``accept`` asks for.

    Weights sent as they are stored (the codec asked for is theirs, or a stored sparse
    step) are offered in ranges: ``Accept-Ranges: bytes`` and a strong ``ETag`` naming
    the blob, and a ``Range`` of one span (with an ``If-Range`` naming that blob, or
    none) gets 206 with those bytes. Answers built per request have neither.

    Args:
        blobs: The blob store.
        blob: The blob row.
        registry: The installed codecs.
        accept: The request's Accept header.
        field: Put the weights under this key of a JSON object holding ``meta`` too
            (None: the body is the weights alone).
        meta: The other fields; in a binary answer they go in the ``FMA-Meta`` header.
        context: The model's bases (see :class:`~.weights_storage.ModelBases`): those
            of a blob stored in a delta codec, and those a download may be sent as a
            delta from (see :func:`~.weights_negotiation.downstream_bases`).
        step: The sparse step stored with an aggregate, sent to a client that holds its
            base.
        aggregate: Which aggregate these weights are (None: the initial model), if any:
            a client that names it as its base holds them already, and gets them whole
            (it reads the head and closes) rather than a delta from themselves, which
            would cost a pass over the model on every poll.
        ranges: The request's headers (its ``Range`` and ``If-Range``).
    """
    headers = {} if field is None else {META_HEADER: orjson.dumps(dict(meta or {})).decode()}
    delta = _downstream(blobs, blob, registry, accept, context, step, aggregate)
    if delta is not None:
        media_type, body = delta
        return _answer(blobs, body, media_type, headers, ranges)
    codec = negotiate(accept, registry)
    if codec is not None and not codec.json_native:
        body = _binary(blobs, blob, codec, registry, context)
        return _answer(blobs, body, codec.media_type, headers, ranges)
    body = _json(blobs, blob, registry, codec, context)
    if field is None:
        return _answer(blobs, body, JSON, {}, ranges)
    head = orjson.dumps({**(meta or {}), field: None})[: -len(b"null}")]
    chunks = _chain(_once(head), _chunks_of(blobs, body), _once(b"}"))
    return _answer(blobs, Body(body.nbytes + len(head) + 1, chunks), JSON, {}, None)


class Body(NamedTuple):
    """An answer's body: a stored blob sent as it is, or chunks made for the request.

    Attributes:
        nbytes: Its length.
        chunks: The chunks, for a body made for the request (None: ``stored``'s bytes).
        stored: The blob row whose bytes it is, when it is one.
    """

    nbytes: int
    chunks: AsyncIterator[Any] | None = None
    stored: Row | None = None


def _chunks_of(blobs: BlobStore, body: Body, start: int = 0, end: int | None = None) -> Any:
    if body.chunks is not None:
        return body.chunks
    assert body.stored is not None  # one or the other (see Body)
    return blobs.stream_file(body.stored["filename"], start, end)


def _answer(
    blobs: BlobStore,
    body: Body,
    media_type: str,
    headers: dict[str, str],
    ranges: Mapping[str, str] | None,
) -> StreamingResponse:
    """The streamed response of ``body``: whole, or the span a ranged request asks for."""
    if body.stored is None:
        headers["Content-Length"] = str(body.nbytes)
        return _ClosingResponse(_chunks_of(blobs, body), headers=headers, media_type=media_type)
    etag = f'"{body.stored["filename"].removesuffix(".blob")}"'
    headers.update({"Accept-Ranges": "bytes", "ETag": etag})
    span = _span(ranges, etag, body.nbytes)
    if span is None:
        headers["Content-Length"] = str(body.nbytes)
        return _ClosingResponse(_chunks_of(blobs, body), headers=headers, media_type=media_type)
    start, end = span
    headers["Content-Length"] = str(end - start)
    headers["Content-Range"] = f"bytes {start}-{end - 1}/{body.nbytes}"
    chunks = _chunks_of(blobs, body, start, end)
    return _ClosingResponse(chunks, status_code=206, headers=headers, media_type=media_type)


_RANGE = re.compile(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", re.IGNORECASE)


def _span(ranges: Mapping[str, str] | None, etag: str, size: int) -> tuple[int, int] | None:
    """The ``[start, end)`` a request's ``Range`` asks of a body of ``size`` bytes.

    None (the whole body) without a Range, with an ``If-Range`` naming another version,
    or with a Range this server does not split bodies for (several spans, other units),
    which RFC 9110 lets a server ignore.

    Raises:
        HTTPError: 416 for a span that starts past the end.
    """
    wanted = None if ranges is None else ranges.get("range")
    if wanted is None or ranges is None:
        return None
    condition = ranges.get("if-range")
    if condition is not None and condition.strip() != etag:
        return None
    found = _RANGE.fullmatch(wanted)
    if found is None or found.group(1) == found.group(2) == "":
        return None
    first, last = found.group(1), found.group(2)
    if first == "":  # the last N bytes
        return max(0, size - int(last)), size
    start = int(first)
    end = size if last == "" else min(int(last) + 1, size)
    if start >= size or end <= start:
        raise HTTPError(
            416,
            {"detail": f"The range {wanted.strip()!r} starts past these {size} bytes."},
            {"Content-Range": f"bytes */{size}"},
        )
    return start, end


def _json(
    blobs: BlobStore,
    blob: Row,
    registry: CodecRegistry,
    codec: Codec | None,
    context: CodecContext | None,
) -> Body:
    """The weights as JSON: plain lists, or the JSON-native ``codec`` asked for.

    A conversion is written twice, piece by piece (:mod:`.jsonstream`): once here to
    count its length (the Content-Length, and any error before the answer starts), once
    as it streams, so the server never holds the whole text, which for plain lists is
    several times the payload.
    """
    target = codec if codec is not None else registry.get("json")
    if _codec(blob, registry).name == target.name:
        return Body(int(blob["nbytes"]), stored=blob)
    tensors = _load(blobs, blob, registry, context)
    try:
        document = target.encode(tensors)
        nbytes = jsonstream.size(document)
    except (EncodeError, orjson.JSONEncodeError) as exc:
        raise detail(
            406,
            f"these weights cannot be written as {target.name} JSON ({exc}); ask for a binary "
            "codec in Accept, or for 'application/json; codec=npz-b64'",
        ) from exc
    return Body(nbytes, jsonstream.stream(document))


def _binary(
    blobs: BlobStore,
    blob: Row,
    codec: Codec,
    registry: CodecRegistry,
    context: CodecContext | None,
) -> Body:
    if blob["codec"] == codec.name:
        return Body(int(blob["nbytes"]), stored=blob)
    tensors = _load(blobs, blob, registry, context)
    try:
        chunks = [memoryview(c).cast("B") for c in codec.encode(tensors)]
    except EncodeError as exc:
        raise detail(406, f"these weights cannot be written as {codec.name}: {exc}") from exc
    return Body(sum(c.nbytes for c in chunks), _sliced(chunks))


def _downstream(
    blobs: BlobStore,
    blob: Row,
    registry: CodecRegistry,
    accept: str | None,
    context: CodecContext | None,
    step: StoredStep | None,
    aggregate: int | NotAnAggregate | None,
) -> tuple[str, Body] | None:
    """A blob's weights as a delta from a base ``accept`` names, if there is one to send.

    Returns:
        The media type and the body; None to answer as usual.
    """
    for codec, base in downstream_bases(accept, registry):
        if base == aggregate:  # the client holds these weights (see weights_response)
            return None
        if step is not None and step.base == base and step.blob["codec"] == codec.name:
            return codec.media_type, Body(int(step.blob["nbytes"]), stored=step.blob)
        if not codec.lossless or context is None or context.bases is None:
            continue
        tensors = _load(blobs, blob, registry, context)
        try:
            encoded = codec.encode(tensors, CodecContext(base, context.bases))
        except (MissingBaseError, EncodeError):  # not held (any more): the next choice
            continue
        chunks = [memoryview(c).cast("B") for c in encoded]
        return codec.media_type, Body(sum(c.nbytes for c in chunks), _sliced(chunks))
    return None


def _codec(blob: Row, registry: CodecRegistry) -> Codec:
    try:
        return registry.get(blob["codec"])
    except UnknownCodecError as exc:
        raise detail(500, f"stored weights are in a codec this server lacks: {exc}") from exc


def _load(
    blobs: BlobStore, blob: Row, registry: CodecRegistry, context: CodecContext | None
) -> Tensors:
    _codec(blob, registry)
    try:
        return load(blobs, blob, registry, context)
    except DecodeError as exc:
        raise detail(500, f"stored weights do not decode: {exc}") from exc


async def _sliced(chunks: Sequence[memoryview]) -> AsyncIterator[memoryview]:
    # Slices bound what the event loop buffers per write; they are views, not copies.
    for chunk in chunks:
        for start in range(0, chunk.nbytes, CHUNK):
            yield chunk[start : start + CHUNK]


async def _once(value: bytes) -> AsyncIterator[bytes]:
    yield value


async def _chain(*parts: AsyncIterator[Any]) -> AsyncIterator[Any]:
    try:
        for part in parts:
            async for chunk in part:
                yield chunk
    finally:
        for part in parts:  # those not reached too: a blob's stream holds its file open
            await _aclose(part)


async def _aclose(iterator: object) -> None:
    """Close an async iterator that can be closed (an async generator, a blob's stream)."""
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        with anyio.CancelScope(shield=True):  # the task may be cancelled: close all the same
            await aclose()
