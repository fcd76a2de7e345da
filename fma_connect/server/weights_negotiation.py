"""What weights are answered as: ``Accept`` negotiation and the stored steps a delta can be.

:func:`negotiate` picks the codec an ``Accept`` prefers (None: plain JSON lists);
:func:`downstream_bases` reads the delta codecs and bases it asks weights to be sent
against; :func:`stored_step` finds the sparse step stored with an aggregate, which a
client holding its base is sent. Part of the weights on the wire (:mod:`.weights`).
"""

from __future__ import annotations

from enum import Enum
from typing import Any, NamedTuple

from ..codecs.base import Codec
from ..codecs.context import uses_context
from ..exceptions import UnknownCodecError
from ..registry import CodecRegistry
from .store import Store
from .store_core import Row

__all__ = [
    "JSON",
    "NOT_AN_AGGREGATE",
    "NotAnAggregate",
    "StoredStep",
    "downstream_bases",
    "negotiate",
    "stored_step",
]

JSON = "application/json"
_JSON_RANGES = frozenset({JSON, "*/*", "application/*"})


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
