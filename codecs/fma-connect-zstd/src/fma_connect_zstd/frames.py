"""The zstd frames of a ``zstd+<inner>`` body, read without decompressing anything.

A body is a skippable frame holding the tag, then one zstd frame::

    skippable frame   magic 0x184D2A5E (little-endian u32), length n (u32), n bytes of
                      UTF-8 JSON {"codec": "zstd+msgpack", "format_version": 1}
    zstd frame        the inner codec's body; content size and checksum written

Decoders skip skippable frames, so ``zstd -d`` turns a body into the inner body.
"""

from __future__ import annotations

import json
from typing import Any

import zstandard

from fma_connect import DecodeError

__all__ = ["FORMAT_VERSION", "frame_end", "read_tag", "tag_frame"]

FORMAT_VERSION = 1
_SKIPPABLE_MAGIC = (0x184D2A5E).to_bytes(4, "little")
_ZSTD_MAGIC = (0xFD2FB528).to_bytes(4, "little")
_MAX_TAG = 4096
_TAG_KEYS = {"codec", "format_version"}
_RESERVED_BLOCK, _RLE_BLOCK = 3, 1


def tag_frame(codec: str) -> bytes:
    """Return the skippable frame that tags a body as ``codec``, format version 1."""
    text = json.dumps({"codec": codec, "format_version": FORMAT_VERSION}).encode()
    return _SKIPPABLE_MAGIC + len(text).to_bytes(4, "little") + text


def read_tag(view: memoryview, codec: str) -> memoryview:
    """Check the tag frame at the start of ``view``; return the rest of the body.

    Raises:
        DecodeError: no tag frame, another codec's tag, or another format version.
    """
    if view.nbytes < 8 or view[:4] != _SKIPPABLE_MAGIC:
        raise DecodeError(
            f"not a {codec} payload: it must start with the fma_connect tag frame "
            f"(bytes {_SKIPPABLE_MAGIC.hex()}), got {view[:4].hex() or 'an empty body'}"
        )
    size = int.from_bytes(view[4:8], "little")
    if size > _MAX_TAG or 8 + size > view.nbytes:
        raise DecodeError(f"{codec} tag frame of {size} bytes does not fit the payload")
    try:
        tag: Any = json.loads(view[8 : 8 + size].tobytes())
    except (ValueError, RecursionError) as exc:
        raise DecodeError(f"{codec} tag frame is not JSON: {exc}") from exc
    if not isinstance(tag, dict) or set(tag) != _TAG_KEYS:
        raise DecodeError(f"{codec} tag frame must be an object with keys {sorted(_TAG_KEYS)}")
    if tag["codec"] != codec:
        raise DecodeError(f"payload is tagged {tag['codec']!r}, not {codec!r}")
    version = tag["format_version"]
    if type(version) is not int or version != FORMAT_VERSION:
        raise DecodeError(
            f"{codec} payload has format version {version!r}, but this fma-connect-zstd "
            f"reads version {FORMAT_VERSION}; upgrade the plugin on this side"
        )
    return view[8 + size :]


def frame_end(frame: memoryview) -> int:
    """Return the length of the zstd frame at the start of ``frame`` (as the C library's
    ``ZSTD_findFrameCompressedSize`` would), by walking its block headers.

    Raises:
        DecodeError: not a zstd frame, or one that is truncated or malformed.
    """
    if frame[:4] != _ZSTD_MAGIC:
        raise DecodeError(f"expected a zstd frame after the tag frame, got {frame[:4].hex()}")
    try:
        position = zstandard.frame_header_size(frame)
        has_checksum = zstandard.get_frame_parameters(frame).has_checksum
    except zstandard.ZstdError as exc:
        raise DecodeError(f"zstd frame header is malformed: {exc}") from exc
    last = False
    while not last:
        if position + 3 > frame.nbytes:
            raise DecodeError("zstd frame is truncated (a block header is missing)")
        header = int.from_bytes(frame[position : position + 3], "little")
        last, kind, size = bool(header & 1), (header >> 1) & 3, header >> 3
        if kind == _RESERVED_BLOCK:
            raise DecodeError("zstd frame holds a block of the reserved type")
        position += 3 + (1 if kind == _RLE_BLOCK else size)
    position += 4 if has_checksum else 0
    if position > frame.nbytes:
        raise DecodeError(f"zstd frame is truncated: it needs {position} bytes, has {frame.nbytes}")
    return position
