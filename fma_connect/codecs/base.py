"""The codec contract: what a codec is, and the tagged-object form of JSON-native payloads.

A codec turns an ordered list of named numpy arrays into a wire payload and back. It
never sees framework objects (that conversion sits above it, in :mod:`fma_connect.spec`)
and never unpickles anything.

Two kinds exist:

* **JSON-native** codecs (``json_native = True``) produce a JSON value that travels in the
  ``data`` field of an ordinary JSON request, so a JSON-only service stores it verbatim.
  ``encode`` returns that value (numpy arrays inside it are allowed: the transport writes
  them with orjson); ``decode`` receives the parsed JSON value. Except for the plain
  ``json`` codec, the value is a *tagged object* (see :func:`tag`), which makes it
  self-describing.
* **Binary** codecs produce a body of their own, sent with their ``media_type``.
  ``encode`` returns a sequence of bytes-like chunks whose concatenation is the body
  (so tensors' own buffers can be sent without joining them); ``decode`` receives one
  bytes-like object (bytes, bytearray, memoryview or mmap).

A receiver that bounds how many tensors it takes (the reference server's
``max_tensors``) decodes through :func:`decode_with` with ``max_tensors=``. A codec may
take that bound as an optional keyword of its own ``decode``
(``decode(payload, *, max_tensors=None)``) and refuse a payload whose header or
directory already lists more, before building any tensor (:func:`check_max_tensors`
raises the error to use); the built-in codecs do. For a codec without the keyword
(every plugin written against ``decode(payload)`` keeps working unchanged),
:func:`decode_with` counts the tensors after decoding.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..exceptions import DecodeError, TooManyTensorsError
from .context import CodecContext, uses_context

__all__ = [
    "Codec",
    "Tensors",
    "check_max_tensors",
    "check_version",
    "codec_problem",
    "decode_with",
    "read_tag",
    "tag",
]

#: Ordered ``(name, array)`` pairs: what every codec encodes and decodes.
Tensors = list[tuple[str, np.ndarray]]

#: A codec name: lowercase ``[a-z0-9]`` words joined by ``-`` or ``+`` (``zstd+msgpack``).
NAME = re.compile(r"[a-z0-9]+(?:[-+][a-z0-9]+)*")
#: A media type without parameters: ``type/subtype`` in RFC 6838's characters, lowercase.
MEDIA_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*")

# Keys of a tagged object; "codec" alone is not enough, since user JSON could hold it.
_TAG_KEYS = frozenset({"codec", "format_version", "payload"})


@runtime_checkable
class Codec(Protocol):
    """What a codec provides. Plugins implement this; inheriting from it is optional.

    Attributes:
        name: The wire tag, lowercase kebab-case (``"msgpack"``, ``"npz-b64"``).
        media_type: The Content-Type of a body in this codec (``application/json`` for
            JSON-native codecs).
        lossless: True when every tensor it accepts comes back bit for bit, with its
            dtype, shape and name.
        json_native: True when the payload is a JSON value carried in a JSON body.
    """

    name: str
    media_type: str
    lossless: bool
    json_native: bool

    def encode(self, tensors: Sequence[tuple[str, np.ndarray]]) -> Any:
        """Encode ``tensors``: a JSON value if ``json_native``, else bytes-like chunks.

        Raises:
            EncodeError: a tensor cannot be written (its name is in the message).
        """
        ...

    def decode(self, payload: Any) -> Tensors:
        """Decode a payload produced by :meth:`encode` (possibly on another machine).

        A codec may also take an optional keyword ``max_tensors`` (see the module notes).

        Raises:
            DecodeError: the payload is corrupt, truncated or of an unknown format version.
        """
        ...


def tag(codec: str, format_version: int, payload: Any) -> dict[str, Any]:
    """Wrap a JSON-native payload in a self-describing tagged object."""
    return {"codec": codec, "format_version": format_version, "payload": payload}


def read_tag(value: Any) -> tuple[str, int, Any] | None:
    """Return ``(codec, format_version, payload)`` if ``value`` is a tagged object, else None.

    Raises:
        DecodeError: ``value`` has the tag keys but malformed values (a codec that is
            not a string, a format version that is not an integer; ``true`` is none).
    """
    if not isinstance(value, dict) or len(value) != len(_TAG_KEYS) or value.keys() != _TAG_KEYS:
        return None
    codec, version = value["codec"], value["format_version"]
    if not isinstance(codec, str) or type(version) is not int:
        raise DecodeError(
            'malformed codec tag: expected "codec" to be a string and "format_version" an '
            f"integer, got codec={_brief(codec)}, format_version={_brief(version)}"
        )
    return codec, version, value["payload"]


def _brief(value: Any) -> str:
    """A value of a malformed tag, for its error: short whatever arrived (it may be huge)."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, list | dict):
        return "an array" if isinstance(value, list) else "an object"
    if isinstance(value, int) and value.bit_length() > 64:
        return "an integer beyond 64 bits"
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


def check_version(codec: str, version: int, supported: int | Sequence[int]) -> None:
    """Refuse a payload whose format version this codec does not read.

    Args:
        codec: The codec's name, for the message.
        version: The payload's format version.
        supported: The version this codec reads, or the versions (oldest first).

    Raises:
        DecodeError: ``version`` is not one of ``supported``.
    """
    versions = [supported] if isinstance(supported, int) else list(supported)
    if version not in versions:
        reads = (
            f"version {versions[0]}"
            if len(versions) == 1
            else "versions " + ", ".join(map(str, versions[:-1])) + f" and {versions[-1]}"
        )
        raise DecodeError(
            f"{codec} payload has format version {version}, but this fma_connect reads "
            f"{reads}; upgrade fma_connect (or the codec plugin) on this side"
        )


def check_max_tensors(count: int, max_tensors: int | None) -> None:
    """Refuse a payload of ``count`` tensors when that is more than ``max_tensors``.

    A codec whose ``decode`` takes ``max_tensors`` calls this with the count its header
    (or directory) states, before building any tensor.

    Raises:
        TooManyTensorsError: ``max_tensors`` is not None and ``count`` exceeds it.
    """
    if max_tensors is not None and count > max_tensors:
        raise TooManyTensorsError(count, max_tensors)


def codec_problem(codec: Codec) -> str | None:
    """What is wrong with a codec object's name, media type or flags, or None.

    The registry refuses such a codec, and the contract kit fails it, with this text.
    """
    if not isinstance(codec.name, str) or not NAME.fullmatch(codec.name):
        return (
            f"its name {codec.name!r} is not lowercase kebab-case ([a-z0-9] words joined "
            "by '-' or '+')"
        )
    if not isinstance(codec.media_type, str) or not MEDIA_TYPE.fullmatch(codec.media_type):
        return f"its media_type {codec.media_type!r} is not a lowercase type/subtype"
    if not isinstance(codec.lossless, bool) or not isinstance(codec.json_native, bool):
        return (
            f"its lossless ({codec.lossless!r}) and json_native ({codec.json_native!r}) "
            "must be True or False"
        )
    return None


def decode_with(
    codec: Codec,
    payload: Any,
    *,
    max_tensors: int | None = None,
    context: CodecContext | None = None,
) -> Tensors:
    """``codec.decode(payload)``, checked to be a list of ``(str, numpy array)`` pairs.

    Every decode of a received payload goes through here, so a plugin codec that
    returns something else is reported as a broken codec, not as a crash further on.

    Args:
        codec: The codec the payload is in.
        payload: What :meth:`Codec.decode` takes.
        max_tensors: Refuse a payload of more tensors than this (None: no bound). A
            codec whose ``decode`` takes a ``max_tensors`` keyword gets it, and refuses
            before building the tensors; any other codec's result is counted.
        context: The base aggregates and state for a codec that uses a context (see
            :mod:`fma_connect.codecs.context`); an empty one when None. Other codecs
            never see it.

    Raises:
        TooManyTensorsError: the payload holds more than ``max_tensors`` tensors.
        DecodeError: the payload does not decode, or the codec returned something else.
    """
    args: tuple[Any, ...] = (payload,)
    if uses_context(codec):
        args = (payload, context if context is not None else CodecContext())
    if max_tensors is not None and _takes_max_tensors(codec):
        tensors = codec.decode(*args, max_tensors=max_tensors)  # type: ignore[call-arg]
    else:
        tensors = codec.decode(*args)
    if isinstance(tensors, list):
        wrong = next((pair for pair in tensors if not _is_pair(pair)), None)
        if wrong is None:
            # Also when the codec took the bound: a plugin could take it and ignore it.
            check_max_tensors(len(tensors), max_tensors)
            return tensors
        got = f"a list holding {_describe(wrong)}"
    else:
        got = type(tensors).__name__
    raise DecodeError(
        f"codec {codec.name!r} is broken: its decode returned {got}, not a list of "
        "(name, numpy array) pairs"
    )


def _takes_max_tensors(codec: Codec) -> bool:
    """Whether ``codec.decode`` has a ``max_tensors`` parameter (the optional capability)."""
    try:
        parameters = inspect.signature(codec.decode).parameters
    except (TypeError, ValueError):  # no signature to read (some builtins, C extensions)
        return False
    parameter = parameters.get("max_tensors")
    return parameter is not None and parameter.kind in (
        inspect.Parameter.KEYWORD_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    )


def _is_pair(value: Any) -> bool:
    return (
        isinstance(value, tuple)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], np.ndarray)
    )


def _describe(value: Any) -> str:
    if isinstance(value, tuple) and len(value) == 2:
        return f"({type(value[0]).__name__}, {type(value[1]).__name__})"
    return type(value).__name__
