"""Weights out of answers, as the client protocol reads them (no I/O): the base of
:class:`~fma_connect._receiving.Receiving`.

:class:`ReceivingWeights` holds the receiving state and what the receiving calls share:
the Accept header a codec asks in, JSON or binary answers, a URL to download, decoding
into ``into=`` arrays, restoring into ``like=`` or the last update's Spec, and a delta
codec's held base aggregate.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import orjson

from ._into import Into
from ._messages import Close, Flow, ReadBody, Reply, Request, json_object
from ._transport_bodies import Progress
from ._transport_options import API_PREFIX
from .codecs.base import Codec, Tensors, decode_with, read_tag
from .codecs.context import CodecContext, ContextCodec, MissingBaseError, uses_context
from .codecs.json_lists import check_document_size, fast_layers
from .codecs.msgpack_numpy import MsgpackCodec
from .exceptions import APIError, ConfigurationError, DecodeError, EncodeError, UnknownCodecError
from .registry import CodecRegistry
from .spec import Spec, spec_like, untyped

__all__ = ["META_HEADER", "ReceivingWeights", "Target"]

_API = API_PREFIX
_JSON = "application/json"
#: What received weights are restored into (see ``Receiving.target``).
Target = Spec | Into | None
#: Response header holding the JSON fields of a response whose body is a binary payload.
META_HEADER = "FMA-Meta"
#: What a delta codec's client asks answers in: whole and lossless, its next base.
_BASE_MEDIA = MsgpackCodec.media_type
#: What a delta codec's client receives aggregates in, as deltas from the one it holds:
#: a sparse step the server stored (exact: the aggregate is what it decodes to), else
#: the lossless delta.
_DOWNSTREAM = ("sparse", "delta")
#: The JSON-native codec a ``json`` client asks for to receive tensors with their names.
_NAMED = "npz-b64"


class ReceivingWeights(ABC):
    """How the receiving calls read weights; :class:`ClientProtocol` sets the state.

    Attributes:
        federated_model_id: The model's id.
        codec, registry, progress: The client's codec, codecs and progress callback.
        spec: The last update's structure (what answers are restored into by default).
        last_aggregate: The newest aggregate id handed to the caller (None: none yet).
        held: A delta codec's last received aggregate (id, tensors), its next base.
        codec_state: The codec's own state (a delta codec's residual).
        read_timeout: The transport's read timeout, which bounds a long-poll's hold.
        clock: Monotonic seconds.
    """

    federated_model_id: int
    codec: Codec | ContextCodec
    registry: CodecRegistry
    progress: Progress | None
    spec: Spec | None
    last_aggregate: int | None
    held: tuple[int | None, Tensors] | None
    _received: Tensors | None
    codec_state: dict[str, Any]
    read_timeout: float | None
    clock: Callable[[], float]

    @abstractmethod
    def call(self, request: Request) -> Flow[Reply]:
        """Send a request as this client (``ClientProtocol.call``: errors get hints)."""

    @abstractmethod
    def _client_headers(self) -> Flow[dict[str, str]]:
        """The client's identity headers, registering it first if it has no UUID."""

    def accept(self, target: Target) -> str:
        """The Accept header of a request for weights restored into ``target``."""
        # Plain application/json asks for plain lists (what the original client gets);
        # a tagged JSON codec is asked for by name, a binary one by its media type.
        if self.codec.name == "json":
            if target is not None and not target.positional and _NAMED in self.registry:
                # Named weights are restored by name where the service can send names
                # (the reference server: a tagged npz-b64 object); the stock service
                # ignores Accept and sends plain lists, restored by position.
                return f"{_JSON}; codec={_NAMED}, {_JSON};q=0.9"
            return _JSON
        if self.codec.json_native:
            return f"{_JSON}; codec={self.codec.name}"
        if uses_context(self.codec):  # whole, or as a delta from the aggregate held
            whole = f"{_BASE_MEDIA}, {_JSON};q=0.9"
            if self.held is None:
                return whole
            base = "initial" if self.held[0] is None else self.held[0]
            deltas = [self.registry.get(n) for n in _DOWNSTREAM if n in self.registry]
            return ", ".join([*(f"{c.media_type}; base={base}" for c in deltas), whole])
        return f"{self.codec.media_type}, {_JSON};q=0.9"

    def target(self, like: Any, into: Any = None) -> Target:
        """What received weights are restored into: ``into``'s arrays, ``like``, else
        the last update's Spec."""
        if into is not None:
            if like is not None:
                raise ConfigurationError(
                    "give like= or into=, not both (into= is its own template)"
                )
            return Into(into)
        return spec_like(like) if like is not None else self.spec

    def _weights(self, value: Any, target: Target) -> Flow[Any]:
        """Turn a weight field of a JSON answer (inline weights or a URL) into weights."""
        if value is None:
            return None
        if isinstance(value, str):
            return (yield from self._download(value, target))
        tagged = read_tag(value)
        if tagged is not None:
            return self._restore(decode_with(self.registry.get(tagged[0]), value), target)
        if target is None:
            return value  # plain JSON and nothing to restore into: what the service sent
        return self._restore(decode_with(self.registry.get("json"), value), target)

    def _download(self, url: str, target: Target) -> Flow[Any]:
        headers = yield from self._client_headers()
        reply = yield from self.call(
            Request("GET", url, headers={**headers, "Accept": self.accept(target)}, stream=True)
        )
        if _is_json(reply) or not _is_known_binary(reply, self.registry):
            yield from _check_json_length(reply)
            body = yield ReadBody(reply, None, self.progress)
            if target is not None:
                fast = fast_layers(memoryview(body).cast("B"))
                if fast is not None:
                    return self._restore(fast[1], target)
            try:
                value = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise DecodeError(
                    f"weights at {url} are neither JSON nor an installed binary codec "
                    f"(Content-Type {reply.headers.get('Content-Type')!r}): {exc}"
                ) from exc
            return (yield from self._weights(value, target))
        tensors = yield from self._decode_binary(reply, target)
        return self._restore(tensors, target)

    def _json_with_weights(
        self, reply: Reply, field: str, target: Target
    ) -> Flow[tuple[dict[str, Any], bool]]:
        """Read a JSON object answer whose ``field`` may hold weights as plain lists.

        Returns:
            The answer, and whether ``field`` already holds the restored weights (the
            fast path, taken when there is a template or spec to restore them into).
        """
        yield from _check_json_length(reply)
        body = yield ReadBody(reply, None, self.progress)
        if target is not None:
            fast = fast_layers(memoryview(body).cast("B"), field)
            if fast is not None:
                fields, tensors = fast
                fields[field] = self._restore(tensors, target)
                return fields, True
        return json_object(reply, body), False

    def _decode_binary(self, reply: Reply, target: Target = None) -> Flow[Tensors]:
        """Decode a binary answer; into ``target``'s arrays where it is :class:`Into`."""
        content_type = reply.headers.get("Content-Type", "")
        try:
            codec = self.registry.for_media_type(content_type)
        except UnknownCodecError as exc:
            yield Close(reply)
            raise DecodeError(
                f"{reply.url} answered Content-Type {content_type!r}, which is neither "
                f"JSON nor the media type of an installed codec ({exc})"
            ) from exc
        place = target.placer(codec) if isinstance(target, Into) else None
        body = yield ReadBody(reply, place, self.progress)
        if body is None:  # read into the arrays
            assert isinstance(target, Into)
            return target.placed()
        return decode_with(codec, body, context=self._context(None))

    # -- a delta codec's bases ------------------------------------------------------------

    def _context(
        self, base_aggregate: int | None, state: dict[str, Any] | None = None
    ) -> CodecContext:
        """The context a delta codec encodes and decodes in: the aggregates this client has."""
        return CodecContext(
            base_aggregate, self._base, self.codec_state if state is None else state
        )

    def _holds(self, aggregate: int | None) -> bool:
        return self.held is not None and self.held[0] == aggregate

    def _base(self, aggregate: int | None) -> Tensors:
        """An aggregate's tensors (None: the initial model), if this client holds it."""
        if self.held is not None and self.held[0] == aggregate:
            return self.held[1]
        raise MissingBaseError(aggregate, "this client has not received it")

    def _fetch_base(self, aggregate: int) -> Flow[None]:
        """Fetch an aggregate this client has not received, as the next update's base."""
        headers = yield from self._client_headers()
        try:
            reply = yield from self.call(
                Request(
                    "GET",
                    f"{_API}model_aggregates/{aggregate}/result/",
                    headers={**headers, "Accept": _BASE_MEDIA},
                    stream=True,
                )
            )
        except APIError as exc:
            raise EncodeError(
                f"cannot send a {self.codec.name} update against base_aggregate {aggregate}: "
                f"this client has not received it and the service does not give it ({exc})"
            ) from exc
        tensors = yield from self._decode_binary(reply)
        self.held = (aggregate, tensors)

    def _hold(self, aggregate: Any) -> None:
        """Keep what was just received as the next update's base (delta codecs only).

        Weights without an aggregate are the initial model (the only artifact a model
        has before its first aggregate), the base of an update without base_aggregate.
        """
        if self._received is not None and (aggregate is None or type(aggregate) is int):
            self.held = (aggregate, self._received)
        self._received = None

    def _restore(self, tensors: Tensors, target: Target) -> Any:
        if uses_context(self.codec):  # a copy: the caller may train in place on the result
            self._received = [(name, array.copy()) for name, array in tensors]
        return target.restore(tensors) if target is not None else untyped(tensors)


def _check_json_length(reply: Reply) -> Flow[None]:
    length = reply.headers.get("Content-Length", "")
    if length.isdigit():
        try:
            check_document_size(int(length), encoding=False)
        except DecodeError:
            yield Close(reply)
            raise


def _is_json(reply: Reply) -> bool:
    content_type = reply.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
    return content_type == _JSON or content_type.endswith("+json")


def _is_known_binary(reply: Reply, registry: CodecRegistry) -> bool:
    try:
        registry.for_media_type(reply.headers.get("Content-Type", ""))
    except UnknownCodecError:
        return False
    return True


def _meta(reply: Reply) -> dict[str, Any]:
    raw = reply.headers.get(META_HEADER)
    if raw is None:
        return {}
    try:
        meta = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"{META_HEADER} header is not JSON: {raw[:200]!r}") from exc
    if not isinstance(meta, dict):
        raise DecodeError(f"{META_HEADER} header must be a JSON object, got {raw[:200]!r}")
    return meta
