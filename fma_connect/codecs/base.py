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
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..exceptions import DecodeError

__all__ = ["Codec", "Tensors", "codec_problem", "decode_with", "read_tag", "tag"]

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
        DecodeError: ``value`` has the tag keys but malformed values.
    """
    if not isinstance(value, dict) or set(value) != _TAG_KEYS:
        return None
    codec, version = value["codec"], value["format_version"]
    if not isinstance(codec, str) or type(version) is not int:
        raise DecodeError(
            f"malformed codec tag: expected a string codec and an integer format_version, "
            f"got codec={codec!r}, format_version={version!r}"
        )
    return codec, version, value["payload"]


def check_version(codec: str, version: int, supported: int) -> None:
    """Refuse a payload whose format version this codec does not read.

    Raises:
        DecodeError: ``version`` is not ``supported``.
    """
    if version != supported:
        raise DecodeError(
            f"{codec} payload has format version {version}, but this fma_connect reads "
            f"version {supported}; upgrade fma_connect (or the codec plugin) on this side"
        )


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


def decode_with(codec: Codec, payload: Any) -> Tensors:
    """``codec.decode(payload)``, checked to be a list of ``(str, numpy array)`` pairs.

    Every decode of a received payload goes through here, so a plugin codec that
    returns something else is reported as a broken codec, not as a crash further on.

    Raises:
        DecodeError: the payload does not decode, or the codec returned something else.
    """
    tensors = codec.decode(payload)
    if isinstance(tensors, list):
        wrong = next((pair for pair in tensors if not _is_pair(pair)), None)
        if wrong is None:
            return tensors
        got = f"a list holding {_describe(wrong)}"
    else:
        got = type(tensors).__name__
    raise DecodeError(
        f"codec {codec.name!r} is broken: its decode returned {got}, not a list of "
        "(name, numpy array) pairs"
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
