"""The body of the delta codecs: a ``msgpack`` body whose first block is a manifest.

The ``delta`` and ``sparse`` codecs write their payloads as the ``msgpack`` codec's body
(so its framing, its header checksum and the crc32 of every block are theirs too): a
first uint8 block named ``"\\u0000<codec>"`` holds a msgpack map, the manifest, with
``codec``, ``format_version``, ``base_aggregate`` (an aggregate id, or None for the
model's initial model), ``tensors`` (one map per tensor, with at least ``name``,
``dtype`` and ``shape``) and the codec's own keys; the blocks that follow are the
tensors' data, as the codec lays them out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgpack
import numpy as np

from ..exceptions import DecodeError, EncodeError, TooManyTensorsError
from .base import Tensors, check_max_tensors, check_version
from .msgpack_numpy import MsgpackCodec

__all__ = ["pack", "unpack"]

_COMMON_KEYS = {"codec", "format_version", "base_aggregate", "tensors"}
_CONTAINER = MsgpackCodec()


def pack(codec: str, manifest: dict[str, Any], blocks: Sequence[tuple[str, np.ndarray]]) -> Any:
    """The body of ``manifest`` (its common keys filled by the caller) and ``blocks``.

    Raises:
        EncodeError: a block is named as the manifest is.
    """
    name = _name(codec)
    if any(block_name == name for block_name, _ in blocks):
        raise EncodeError(f"the tensor name {name!r} is reserved by the {codec} codec")
    packed = np.frombuffer(msgpack.packb(manifest), np.uint8)
    return _CONTAINER.encode([(name, packed), *blocks])


def unpack(
    codec: str,
    payload: Any,
    *,
    version: int,
    keys: set[str],
    entry_keys: set[str],
    max_tensors: int | None,
    max_blocks: int | None,
) -> tuple[dict[str, Any], Tensors]:
    """Read a body's manifest (checked) and its blocks.

    Args:
        codec: The codec's name.
        payload: The body.
        version: The format version the codec reads.
        keys: The manifest's keys beyond the common ones.
        entry_keys: The keys of each tensor's map.
        max_tensors: Refuse more tensors than this (None: no bound).
        max_blocks: The most blocks so many tensors can have (None: no bound).

    Raises:
        TooManyTensorsError: more than ``max_tensors`` tensors.
        DecodeError: the body or its manifest is malformed.
    """
    limit = None if max_blocks is None else max_blocks + 1  # and the manifest
    try:
        blocks = _CONTAINER.decode(payload, max_tensors=limit)
    except TooManyTensorsError as exc:
        # Counted in blocks: at least one a tensor after the manifest.
        raise TooManyTensorsError(exc.count - 1, max_tensors or 0) from None
    if not blocks or blocks[0][0] != _name(codec):
        raise DecodeError(f"{codec} payload has no manifest: is it a plain msgpack body?")
    try:
        manifest = msgpack.unpackb(blocks[0][1].tobytes(), strict_map_key=True)
    except (ValueError, msgpack.UnpackException) as exc:
        raise DecodeError(f"{codec} manifest is not msgpack: {exc}") from exc
    wanted = _COMMON_KEYS | keys
    if not isinstance(manifest, dict) or set(manifest) != wanted:
        raise DecodeError(f"{codec} manifest must be a map of {sorted(wanted)}")
    found = manifest["format_version"]
    if manifest["codec"] != codec or type(found) is not int:
        raise DecodeError(f"{codec} manifest names another codec or a malformed version")
    check_version(codec, found, version)
    aggregate = manifest["base_aggregate"]
    if aggregate is not None and (type(aggregate) is not int or aggregate < 1):
        raise DecodeError(f"{codec} manifest base_aggregate must be an id, got {aggregate!r}")
    entries = manifest["tensors"]
    if not isinstance(entries, list):
        raise DecodeError(f"{codec} manifest tensors must be a list")
    check_max_tensors(len(entries), max_tensors)
    for entry in entries:
        if not isinstance(entry, dict) or set(entry) != entry_keys:
            raise DecodeError(f"{codec} manifest entries must be maps of {sorted(entry_keys)}")
        shape = entry["shape"]
        if not isinstance(entry["name"], str):
            raise DecodeError(f"{codec} manifest tensor names must be strings")
        if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape):
            raise DecodeError(
                f"{codec} manifest shape must be non-negative integers: {shape!r:.80}"
            )
    return manifest, blocks[1:]


def _name(codec: str) -> str:
    """The manifest block's name: no tensor of a flattened tree can have it."""
    return f"\u0000{codec}"
