"""Weights in storage: decoding uploads, storing tensors and loading them back.

An update's JSON ``data`` decodes as plain layer lists or a tagged codec object
(:func:`decode_data`); tensors are written as blobs in a codec (:func:`store_tensors`,
their names kept where the codec drops them) and read back (:func:`load`, against the
model's bases for a delta codec: :class:`ModelBases`); an aggregate is stored in the
codec :func:`result_codec` picks. Part of the weights on the wire (:mod:`.weights`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, overload

import orjson

from ..codecs.base import Codec, Tensors, decode_with, read_tag
from ..codecs.context import CodecContext, MissingBaseError, uses_context
from ..exceptions import DecodeError
from ..registry import CodecRegistry
from .blobs import BlobStore
from .mean import Update
from .store import Store
from .store_core import NewBlob, Row
from .structure import positional

__all__ = [
    "ModelBases",
    "decode_data",
    "load",
    "names_to_keep",
    "result_codec",
    "store_tensors",
]


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
