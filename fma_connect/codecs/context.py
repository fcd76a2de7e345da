"""What a codec that needs more than the tensors gets: the base aggregate and its own state.

A delta codec writes an update as its difference from the aggregate it started from
(its *base*); a codec with error feedback keeps, per client, what it did not send. Such
a codec declares ``uses_context = True`` and then takes a :class:`CodecContext` as the
second argument of ``encode(tensors, context)`` and ``decode(payload, context)``. Codecs
without the attribute keep today's ``encode(tensors)`` / ``decode(payload)``: every
existing plugin works unchanged. :func:`encode_with` and
:func:`~fma_connect.codecs.base.decode_with` call a codec the right way.

Who builds the context: :class:`~fma_connect.WebClient` when it sends an update
(``base_aggregate`` is the ``send_update`` argument; the bases are the aggregates it
received, or fetches) and when it decodes what it receives; the reference server when it
decodes an upload (the bases are the model's stored aggregates). A codec names the base
it used in its own payload, so that the receiver looks up the same one.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..exceptions import DecodeError, EncodeError

__all__ = [
    "CodecContext",
    "ContextCodec",
    "MissingBaseError",
    "encode_with",
    "load_state",
    "save_state",
    "uses_context",
]

# Names in a state file: the codec's, then "<key>\0<name>" per array.
_CODEC_KEY = "\u0000codec"
_SEPARATOR = "\u0000"


class MissingBaseError(DecodeError):
    """A payload is a delta against an aggregate that this side does not hold.

    Attributes:
        aggregate: The id of that aggregate (None: the model's initial model).
    """

    def __init__(self, aggregate: int | None, why: str = "") -> None:
        self.aggregate = aggregate
        what = "the initial model" if aggregate is None else f"aggregate {aggregate}"
        super().__init__(
            f"the payload is a delta against {what}, which is not held here"
            + (f" ({why})" if why else "")
        )

    def __reduce__(self) -> tuple[type[MissingBaseError], tuple[int | None, str]]:
        return (type(self), (self.aggregate, ""))


@dataclass
class CodecContext:
    """The base aggregate and per-client state a context codec works with.

    Attributes:
        base_aggregate: The id of the aggregate the update starts from (the
            ``base_aggregate`` of ``send_update``), or None: it starts from the model's
            initial model, if there is one.
        bases: Returns an aggregate's tensors by id (None: the model's initial model);
            raises :class:`MissingBaseError` when this side does not hold it. None: no
            base is held at all.
        state: The codec's own state for this client, kept between rounds (e.g. an
            error-feedback residual); the codec may read and change it.
    """

    base_aggregate: int | None = None
    bases: Callable[[int | None], Sequence[tuple[str, np.ndarray]]] | None = None
    state: dict[str, Any] = field(default_factory=dict)

    def base(self, aggregate: int | None) -> dict[str, np.ndarray]:
        """The tensors of aggregate ``aggregate`` (None: the initial model), by name.

        Raises:
            MissingBaseError: it is not held here.
        """
        if self.bases is None:
            raise MissingBaseError(aggregate)
        return dict(self.bases(aggregate))

    def starting_base(self) -> dict[str, np.ndarray]:
        """What an encoder's update starts from: ``base_aggregate``'s tensors, else the
        initial model's, else nothing (an empty dict: the tensors then go whole).

        Raises:
            MissingBaseError: a named ``base_aggregate`` is not held.
        """
        try:
            return self.base(self.base_aggregate)
        except MissingBaseError:
            if self.base_aggregate is None:
                return {}
            raise


@runtime_checkable
class ContextCodec(Protocol):
    """A codec that takes a :class:`CodecContext` (see the module notes).

    Its attributes are :class:`~fma_connect.codecs.base.Codec`'s, plus ``uses_context``.
    """

    name: str
    media_type: str
    lossless: bool
    json_native: bool
    uses_context: bool

    def encode(self, tensors: Sequence[tuple[str, np.ndarray]], context: CodecContext) -> Any:
        """Encode ``tensors`` in ``context`` (e.g. as a delta against its base)."""
        ...

    def decode(self, payload: Any, context: CodecContext) -> list[tuple[str, np.ndarray]]:
        """Decode a payload in ``context`` (whose bases it names)."""
        ...


def save_state(path: str | os.PathLike[str], codec: str, state: dict[str, Any]) -> None:
    """Write a codec's state (its error-feedback residual...) to ``path``, atomically.

    The state must map keys to dicts of numpy arrays (what the built-in codecs keep). It
    is written in the ``msgpack`` codec, never pickled, with the codec's name, so a
    restarted client goes on where it stopped.

    Raises:
        EncodeError: the state holds something else than dicts of arrays.
    """
    tensors: list[tuple[str, np.ndarray]] = [(_CODEC_KEY, np.frombuffer(codec.encode(), np.uint8))]
    for key, arrays in state.items():
        if not isinstance(arrays, dict) or not all(
            isinstance(name, str) and isinstance(array, np.ndarray)
            for name, array in arrays.items()
        ):
            raise EncodeError(f"codec state {key!r} is not a dict of numpy arrays")
        tensors += [(f"{key}{_SEPARATOR}{name}", array) for name, array in arrays.items()]
    from .msgpack_numpy import MsgpackCodec  # the container; imported here: no import cycle

    target = Path(path)
    partial = target.with_name(f".{target.name}.partial")
    with open(partial, "wb") as file:
        for chunk in MsgpackCodec().encode(tensors):
            file.write(chunk)
        file.flush()
        os.fsync(file.fileno())
    os.replace(partial, target)


def load_state(path: str | os.PathLike[str], codec: str) -> dict[str, Any]:
    """Read a codec state that :func:`save_state` wrote (an empty one if ``path`` is absent).

    Raises:
        DecodeError: the file is not such a state, or is another codec's.
    """
    from .msgpack_numpy import MsgpackCodec

    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        return {}
    tensors = MsgpackCodec().decode(bytearray(raw))
    if not tensors or tensors[0][0] != _CODEC_KEY:
        raise DecodeError(f"{path} is not a codec state file")
    owner = tensors[0][1].tobytes().decode("utf-8", "replace")
    if owner != codec:
        raise DecodeError(f"{path} holds the state of the {owner!r} codec, not of {codec!r}")
    state: dict[str, Any] = {}
    for name, array in tensors[1:]:
        key, _, inner = name.partition(_SEPARATOR)
        state.setdefault(key, {})[inner] = array
    return state


def uses_context(codec: Any) -> bool:
    """Whether a codec takes a :class:`CodecContext` (declares ``uses_context = True``)."""
    return getattr(codec, "uses_context", False) is True


def encode_with(
    codec: Any, tensors: Sequence[tuple[str, np.ndarray]], context: CodecContext
) -> Any:
    """``codec.encode(tensors)``, with ``context`` for a codec that uses one."""
    if uses_context(codec):
        return codec.encode(tensors, context)
    return codec.encode(tensors)
