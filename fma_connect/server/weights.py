"""Weights on the server's wire: decoding uploads, storing tensors, answering per ``Accept``.

Stored blobs keep the codec they arrived in (or, for aggregates, see
:func:`result_codec`). An answer is written in the binary codec the request's
``Accept`` prefers, else as JSON: plain layer lists, as the stock service answers and
the original client reads, unless the request names a JSON-native codec in a ``codec``
parameter, e.g. ``Accept: application/json; codec=npz-b64`` for the tagged ``npz-b64``
object, which keeps names and dtypes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from enum import Enum
from typing import Any, Literal, NamedTuple, overload

import orjson
from starlette.responses import StreamingResponse

from ..codecs.base import Codec, Tensors, decode_with, read_tag
from ..codecs.context import CodecContext, MissingBaseError, uses_context
from ..exceptions import DecodeError, EncodeError, UnknownCodecError
from ..registry import CodecRegistry
from . import jsonstream
from .blobs import CHUNK, BlobStore
from .errors import detail
from .mean import Update
from .store import NewBlob, Row, Store
from .structure import positional

__all__ = [
    "JSON",
    "META_HEADER",
    "NOT_AN_AGGREGATE",
    "ModelBases",
    "NotAnAggregate",
    "StoredStep",
    "decode_data",
    "downstream_bases",
    "load",
    "names_to_keep",
    "negotiate",
    "result_codec",
    "store_tensors",
    "stored_step",
    "weights_response",
]

JSON = "application/json"
#: Response header with the JSON fields of an answer whose body is binary weights.
META_HEADER = "FMA-Meta"
_JSON_RANGES = frozenset({JSON, "*/*", "application/*"})


def decode_data(
    value: Any, registry: CodecRegistry, *, max_tensors: int | None = None
) -> tuple[str, Tensors]:
    """Decode the ``data`` of a JSON update: plain layer lists or a tagged codec object.

    ``max_tensors`` is :func:`~fma_connect.codecs.base.decode_with`'s.

    Returns:
        The codec's name and the tensors.

    Raises:
        TooManyTensorsError: more tensors than ``max_tensors``.
        DecodeError: ``value`` is neither, or does not decode.
        UnknownCodecError: the tag names a codec that is not installed.
    """
    tagged = read_tag(value)
    if tagged is not None:
        codec = registry.get(tagged[0])
        if not codec.json_native:
            raise DecodeError(
                f"codec {codec.name!r} is binary: send it as a {codec.media_type} body"
            )
        return codec.name, decode_with(codec, value, max_tensors=max_tensors)
    if isinstance(value, list):
        return "json", decode_with(registry.get("json"), value, max_tensors=max_tensors)
    raise DecodeError(
        "expected a list of layers (nested lists of numbers) or a tagged codec object "
        f'{{"codec", "format_version", "payload"}}, got {type(value).__name__}'
    )


class ModelBases:
    """The bases a delta payload of one model decodes against, for a :class:`CodecContext`.

    Called with an aggregate id, it gives that aggregate's tensors (None: the model's
    initial model, the base of an update without ``base_aggregate``), each read once.

    Attributes:
        loaded: The bases read so far, by id: those the payloads decoded named.
    """

    def __init__(
        self, store: Store, blobs: BlobStore, registry: CodecRegistry, model_id: int
    ) -> None:
        self._store, self._blobs, self._registry = store, blobs, registry
        self._model_id = model_id
        self.loaded: dict[int | None, Tensors] = {}

    def __call__(self, aggregate: int | None) -> Tensors:
        """The tensors of ``aggregate`` (None: the initial model).

        Raises:
            MissingBaseError: the model has no such aggregate (or no initial model).
        """
        if aggregate in self.loaded:
            return self.loaded[aggregate]
        store, model_id = self._store, self._model_id
        row = (
            store.initial_artifact(model_id)
            if aggregate is None
            else store.get_aggregate(aggregate)
        )
        if row is None or row["federated_model"] != model_id:
            what = "an initial model" if aggregate is None else "such an aggregate"
            raise MissingBaseError(aggregate, f"federated model {model_id} has no {what}")
        tensors = load(self._blobs, store.get_blob(row["blob"]), self._registry)
        self.loaded[aggregate] = tensors
        return tensors


@overload
def load(
    blobs: BlobStore,
    blob: Row,
    registry: CodecRegistry,
    context: CodecContext | None = None,
    *,
    lazy: Literal[False] = False,
) -> Tensors: ...


@overload
def load(
    blobs: BlobStore,
    blob: Row,
    registry: CodecRegistry,
    context: CodecContext | None = None,
    *,
    lazy: bool,
) -> Update: ...


def load(
    blobs: BlobStore,
    blob: Row,
    registry: CodecRegistry,
    context: CodecContext | None = None,
    *,
    lazy: bool = False,
) -> Tensors | Update:
    """Decode a stored blob into tensors (binary ones view a read-only memory map).

    Args:
        blobs: The blob store.
        blob: The blob's row.
        registry: The installed codecs.
        context: The bases of a blob stored in a delta codec (see :class:`ModelBases`).
        lazy: Let a codec that can give tensors rebuilt on demand
            (:class:`~.mean.LazyTensor`) instead of arrays, for a reader that takes them
            a slice at a time (:class:`~.mean.Accumulator`): a codec with a
            ``decode_lazily(payload, context)`` method, as ``sparse`` has, whose
            updates are then held as their changes, not rebuilt whole.

    Raises:
        CodecError: the blob's codec is not installed or the blob does not decode.
        OSError: the file cannot be read.
    """
    codec = registry.get(blob["codec"])
    raw = blobs.read(blob["filename"])
    if not codec.json_native:
        decode_lazily = getattr(codec, "decode_lazily", None) if lazy else None
        if callable(decode_lazily):
            lazily: Update = decode_lazily(raw, context if context is not None else CodecContext())
            return lazily
        return decode_with(codec, raw, context=context)
    try:
        value = orjson.loads(memoryview(raw))
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"stored {codec.name} payload is not JSON: {exc}") from exc
    tensors = decode_with(codec, value)
    names = blob.get("tensor_names")
    if names is None:
        return tensors
    if len(names) != len(tensors):
        raise DecodeError(f"the stored payload holds {len(tensors)} tensors for {len(names)} names")
    return [(name, array) for name, (_, array) in zip(names, tensors, strict=True)]


def names_to_keep(tensors: Tensors, codec: Codec) -> list[str] | None:
    """The tensor names a blob row must keep: those a plain ``json`` payload loses."""
    names = [name for name, _ in tensors]
    return None if codec.name != "json" or positional(names) else names


def store_tensors(blobs: BlobStore, tensors: Tensors, codec: Codec) -> NewBlob:
    """Encode and store tensors (their names too, where ``codec`` drops them).

    Raises:
        EncodeError: the tensors cannot be written in ``codec``.
    """
    payload = codec.encode(tensors)
    chunks = (
        [orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)] if codec.json_native else payload
    )
    filename, nbytes = blobs.write(chunks)
    return NewBlob(codec.name, filename, nbytes, names_to_keep(tensors, codec))


def result_codec(update_codecs: Sequence[str], registry: CodecRegistry) -> list[Codec]:
    """The codecs to try, in order, for an aggregate of updates sent in ``update_codecs``.

    Plain ``json`` when every update was plain JSON (what JSON-only clients read), else
    the first lossless codec the updates used; lossless fallbacks follow.
    """
    names: list[str] = []
    if update_codecs and all(name == "json" for name in update_codecs):
        names.append("json")
    # A delta codec's payload needs its base to decode: an aggregate is stored whole.
    names += [
        name
        for name in update_codecs
        if name in registry and registry.get(name).lossless and not uses_context(registry.get(name))
    ]
    names += [
        info.codec.name for info in registry if info.codec.lossless and not uses_context(info.codec)
    ]
    names.append("json")
    return [registry.get(name) for name in dict.fromkeys(names) if name in registry]


def negotiate(accept: str | None, registry: CodecRegistry) -> Codec | None:
    """Return the codec ``accept`` prefers, or None for plain JSON lists (the default).

    A JSON range with a ``codec`` parameter naming an installed JSON-native codec
    (``application/json; codec=npz-b64``) picks that codec; with another name the
    range is skipped.
    """
    entries = []
    for position, (media, params) in enumerate(_accept_ranges(accept)):
        try:
            quality = float(params.get("q", "1"))
        except ValueError:
            quality = 0.0
        codec = params.get("codec", "").lower() or None
        if media and quality > 0:
            entries.append((-quality, position, media.lower(), codec))
    for _, _, media, codec in sorted(entries):
        if media in _JSON_RANGES:
            if codec is None or codec == "json":
                return None
            if codec in registry and registry.get(codec).json_native:
                return registry.get(codec)
            continue
        try:
            found = registry.for_media_type(media)
        except UnknownCodecError:
            continue
        if not uses_context(found):  # deltas downstream: see downstream_bases
            return found
    return None


class NotAnAggregate(Enum):
    """The type of :data:`NOT_AN_AGGREGATE`."""

    TOKEN = 0


#: Weights that are neither an aggregate nor the initial model (an update's).
NOT_AN_AGGREGATE = NotAnAggregate.TOKEN


class StoredStep(NamedTuple):
    """A stored payload that decodes, against ``base``, to an aggregate (a sparse step)."""

    base: int | None
    blob: Row


def stored_step(store: Store, aggregate: Row) -> StoredStep | None:
    """The sparse step stored with an aggregate row (see ``aggregate_fraction``), if any."""
    if aggregate.get("step_blob") is None:
        return None
    return StoredStep(aggregate["parent"], store.get_blob(aggregate["step_blob"]))


def downstream_bases(accept: str | None, registry: CodecRegistry) -> list[tuple[Any, int | None]]:
    """The delta codecs and bases ``accept`` asks weights to be sent against, in its order.

    A client that holds an aggregate lists delta codecs' media types with a ``base``
    parameter first: ``Accept: application/vnd.fma-connect.delta; base=7, ...``
    (``base=initial``: the model's initial model). The answer is then a delta from that
    base if the server can write one (a lossless delta codec, while the model holds the
    base) or has stored one (a sparse step); the other entries of ``Accept`` say what to
    send otherwise.

    Returns:
        ``(codec, base)`` pairs, the base as an aggregate id (None: the initial model).
    """
    wanted: list[tuple[Any, int | None]] = []
    for media, params in _accept_ranges(accept):
        base = params.get("base")
        if base is None:
            continue
        try:
            codec = registry.for_media_type(media)
        except UnknownCodecError:
            continue
        if not uses_context(codec):
            continue
        if base == "initial":
            wanted.append((codec, None))
        elif base.isascii() and base.isdigit() and len(base) < 19:
            wanted.append((codec, int(base)))
    return wanted


def _accept_ranges(accept: str | None) -> list[tuple[str, dict[str, str]]]:
    """An ``Accept`` header's media ranges, lower-cased, each with its parameters."""
    ranges = []
    for part in (accept or "").split(","):
        media, *params = (piece.strip() for piece in part.split(";"))
        values = {}
        for param in params:
            key, _, value = param.partition("=")
            values[key.strip().lower()] = value.strip().strip('"')
        ranges.append((media.lower(), values))
    return ranges


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
) -> StreamingResponse:
    """Answer with a blob's weights, streamed, in the codec ``accept`` asks for.

    Args:
        blobs: The blob store.
        blob: The blob row.
        registry: The installed codecs.
        accept: The request's Accept header.
        field: Put the weights under this key of a JSON object holding ``meta`` too
            (None: the body is the weights alone).
        meta: The other fields; in a binary answer they go in the ``FMA-Meta`` header.
        context: The model's bases (see :class:`ModelBases`): those of a blob stored in
            a delta codec, and those a download may be sent as a delta from (see
            :func:`downstream_bases`).
        step: The sparse step stored with an aggregate, sent to a client that holds its
            base.
        aggregate: Which aggregate these weights are (None: the initial model), if any:
            a client that names it as its base holds them already, and gets them whole
            (it reads the head and closes) rather than a delta from themselves, which
            would cost a pass over the model on every poll.
    """
    delta = _downstream(blobs, blob, registry, accept, context, step, aggregate)
    if delta is not None:
        media_type, chunks, nbytes = delta
        headers = {"Content-Length": str(nbytes)}
        if field is not None:
            headers[META_HEADER] = orjson.dumps(dict(meta or {})).decode()
        return StreamingResponse(chunks, headers=headers, media_type=media_type)
    codec = negotiate(accept, registry)
    if codec is not None and not codec.json_native:
        chunks, nbytes = _binary(blobs, blob, codec, registry, context)
        headers = {"Content-Length": str(nbytes)}
        if field is not None:
            headers[META_HEADER] = orjson.dumps(dict(meta or {})).decode()
        return StreamingResponse(chunks, headers=headers, media_type=codec.media_type)
    chunks, nbytes = _json(blobs, blob, registry, codec, context)
    if field is not None:
        head = orjson.dumps({**(meta or {}), field: None})[: -len(b"null}")]
        chunks = _chain(_once(head), chunks, _once(b"}"))
        nbytes += len(head) + 1
    return StreamingResponse(chunks, headers={"Content-Length": str(nbytes)}, media_type=JSON)


def _json(
    blobs: BlobStore,
    blob: Row,
    registry: CodecRegistry,
    codec: Codec | None,
    context: CodecContext | None,
) -> tuple[AsyncIterator[Any], int]:
    """The weights as JSON: plain lists, or the JSON-native ``codec`` asked for.

    A conversion is written twice, piece by piece (:mod:`.jsonstream`): once here to
    count its length (the Content-Length, and any error before the answer starts), once
    as it streams, so the server never holds the whole text, which for plain lists is
    several times the payload.
    """
    target = codec if codec is not None else registry.get("json")
    if _codec(blob, registry).name == target.name:
        return blobs.stream_file(blob["filename"]), int(blob["nbytes"])
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
    return jsonstream.stream(document), nbytes


def _binary(
    blobs: BlobStore,
    blob: Row,
    codec: Codec,
    registry: CodecRegistry,
    context: CodecContext | None,
) -> tuple[AsyncIterator[Any], int]:
    if blob["codec"] == codec.name:
        return blobs.stream_file(blob["filename"]), int(blob["nbytes"])
    tensors = _load(blobs, blob, registry, context)
    try:
        chunks = [memoryview(c).cast("B") for c in codec.encode(tensors)]
    except EncodeError as exc:
        raise detail(406, f"these weights cannot be written as {codec.name}: {exc}") from exc
    return _sliced(chunks), sum(c.nbytes for c in chunks)


def _downstream(
    blobs: BlobStore,
    blob: Row,
    registry: CodecRegistry,
    accept: str | None,
    context: CodecContext | None,
    step: StoredStep | None,
    aggregate: int | NotAnAggregate | None,
) -> tuple[str, AsyncIterator[Any], int] | None:
    """A blob's weights as a delta from a base ``accept`` names, if there is one to send.

    Returns:
        The media type, the body's chunks and its length; None to answer as usual.
    """
    for codec, base in downstream_bases(accept, registry):
        if base == aggregate:  # the client holds these weights (see weights_response)
            return None
        if step is not None and step.base == base and step.blob["codec"] == codec.name:
            stream = blobs.stream_file(step.blob["filename"])
            return codec.media_type, stream, int(step.blob["nbytes"])
        if not codec.lossless or context is None or context.bases is None:
            continue
        tensors = _load(blobs, blob, registry, context)
        try:
            encoded = codec.encode(tensors, CodecContext(base, context.bases))
        except (MissingBaseError, EncodeError):  # not held (any more): the next choice
            continue
        chunks = [memoryview(c).cast("B") for c in encoded]
        return codec.media_type, _sliced(chunks), sum(c.nbytes for c in chunks)
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
    for part in parts:
        async for chunk in part:
            yield chunk
