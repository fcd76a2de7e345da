"""The ``delta`` codec: an update as the XOR of its bits with its base aggregate, compressed.

Lossless and bit-exact. Federated updates start from the aggregate they are a round of
training away from, so most of each value's high bits (sign, exponent, leading mantissa)
equal the base's. The codec XORs every tensor's bytes with the same tensor of the base
(``send_update(..., base_aggregate=id)``; without one, the model's initial model when the
client holds it), groups the result by byte plane (all first
bytes, then all second bytes... of the values, so the runs of zero high bytes sit
together) and compresses each tensor with zstd. Without a base, or for a tensor the base
lacks (another name or shape, or a dtype that is not a float of another width), the
tensor's own bytes are planed and compressed.

Layout (format version 1): a ``msgpack`` body (so framing, its header checksum and each
block's crc32 are that codec's) whose first tensor, ``"\\u0000delta"``, is a uint8
array holding a msgpack manifest::

    {"codec": "delta", "format_version": 1, "base_aggregate": id (None: the initial model),
     "tensors": [{"name", "dtype", "shape", "mode": "xor" | "raw", "crc32"}, ...]}

and whose other tensors are, in order, each tensor's zstd frame (uint8). ``crc32`` is
that of the tensor's own bytes as sent, checked after reconstruction: a receiver whose
base differs from the sender's finds out, instead of averaging the wrong values.

Decompression is bounded by the size the manifest states for each tensor, so a small
hostile body cannot make the receiver allocate more than the tensors it declares.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import zstandard

from ..dtypes import dtype_from_tag, tag_of, to_wire_array
from ..exceptions import DecodeError
from ..hookspecs import hookimpl
from . import manifested
from .base import Tensors
from .context import CodecContext
from .msgpack_numpy import crc32

__all__ = ["XorDeltaCodec"]

FORMAT_VERSION = 1
_ENTRY_KEYS = {"name", "dtype", "shape", "mode", "crc32"}
#: The default bound on the bytes a payload's tensors may declare (as the zstd plugin's).
DEFAULT_MAX_OUTPUT_SIZE = 8 << 30
#: zstd level 1: as small as level 3 on XORed byte planes (0.533 against 0.532 of raw,
#: measured on 100M float32 values) and faster; two threads compress large tensors.
_LEVEL = 1
_THREADS = 2


class XorDeltaCodec:
    """Lossless delta against the base aggregate: XOR, byte planes, zstd."""

    name = "delta"
    media_type = "application/vnd.fma-connect.delta"
    lossless = True
    json_native = False
    uses_context = True

    def __init__(self, max_output_size: int = DEFAULT_MAX_OUTPUT_SIZE) -> None:
        """
        Args:
            max_output_size: The most bytes a payload's tensors may declare in all; a
                payload over it is refused before anything is decompressed.
        """
        self.max_output_size = max_output_size

    def encode(self, tensors: Sequence[tuple[str, np.ndarray]], context: CodecContext) -> Any:
        """Encode ``tensors`` as a delta against ``context.base_aggregate`` (if any).

        Raises:
            EncodeError: a tensor cannot be sent, or the base is not held.
            MissingBaseError: the base aggregate's tensors cannot be had.
        """
        base = context.starting_base()
        compressor = zstandard.ZstdCompressor(level=_LEVEL, threads=_THREADS)
        entries: list[dict[str, Any]] = []
        frames: Tensors = []
        for name, array in tensors:
            array = to_wire_array(array, name)
            own = _bytes(array)
            reference = _matching(base.get(name), array.dtype, array.shape)
            mode = "raw" if reference is None else "xor"
            planes = _planes(own, None if reference is None else _bytes(reference), array.dtype)
            frame = compressor.compress(planes.data)
            entries.append(
                {
                    "name": name,
                    "dtype": tag_of(array.dtype, name),
                    "shape": list(array.shape),
                    "mode": mode,
                    "crc32": crc32(own),
                }
            )
            frames.append((name, np.frombuffer(frame, np.uint8)))
        manifest = {
            "codec": self.name,
            "format_version": FORMAT_VERSION,
            "base_aggregate": context.base_aggregate,
            "tensors": entries,
        }
        return manifested.pack(self.name, manifest, frames)

    def decode(
        self, payload: Any, context: CodecContext, *, max_tensors: int | None = None
    ) -> Tensors:
        """Rebuild the tensors of a payload, against the base it names.

        Raises:
            TooManyTensorsError: it holds more than ``max_tensors`` tensors.
            MissingBaseError: it is a delta against an aggregate ``context`` lacks.
            DecodeError: it is corrupt, or its reconstruction does not match what was sent
                (the base held here differs from the sender's).
        """
        manifest, blocks = manifested.unpack(
            self.name,
            payload,
            version=FORMAT_VERSION,
            keys=set(),
            entry_keys=_ENTRY_KEYS,
            max_tensors=max_tensors,
            max_blocks=max_tensors,
        )
        _check_entries(manifest["tensors"])
        if len(manifest["tensors"]) != len(blocks):
            raise DecodeError(
                f"delta manifest lists {len(manifest['tensors'])} tensors for {len(blocks)} blocks"
            )
        sizes = [
            math.prod(entry["shape"]) * dtype_from_tag(entry["dtype"]).itemsize
            for entry in manifest["tensors"]
        ]
        if sum(sizes) > self.max_output_size:
            raise DecodeError(
                f"delta payload declares {sum(sizes):,} bytes of tensors, more than the "
                f"{self.max_output_size:,} this side accepts"
            )
        aggregate = manifest["base_aggregate"]
        needs_base = any(entry["mode"] == "xor" for entry in manifest["tensors"])
        base = context.base(aggregate) if needs_base else {}
        decompressor = zstandard.ZstdDecompressor()
        out: Tensors = []
        for entry, size, (block_name, frame) in zip(
            manifest["tensors"], sizes, blocks, strict=True
        ):
            name = entry["name"]
            if block_name != name:
                raise DecodeError(f"delta block {block_name!r} stands where {name!r} belongs")
            dtype = dtype_from_tag(entry["dtype"])
            try:
                planes = decompressor.decompress(frame.tobytes(), max_output_size=size)
            except zstandard.ZstdError as exc:
                raise DecodeError(f"delta tensor {name!r} does not decompress: {exc}") from exc
            if len(planes) != size:
                raise DecodeError(
                    f"delta tensor {name!r} holds {len(planes)} bytes, its shape needs {size}"
                )
            reference = None
            if entry["mode"] == "xor":
                reference = _matching(base.get(name), dtype, tuple(entry["shape"]))
                if reference is None:
                    raise DecodeError(
                        f"delta tensor {name!r} is a delta against aggregate {aggregate}, whose "
                        f"{name!r} here is not a {entry['dtype']} tensor of shape "
                        f"{entry['shape']}"
                    )
            own = _unplaned(
                np.frombuffer(planes, np.uint8),
                None if reference is None else _bytes(reference),
                dtype,
            )
            if crc32(own) != entry["crc32"]:
                raise DecodeError(
                    f"delta tensor {name!r} does not rebuild what was sent (crc32 differs)"
                    + (f": the base aggregate {aggregate} held here differs" if aggregate else "")
                )
            out.append((name, own.view(dtype).reshape(entry["shape"])))
        return out


def _bytes(array: np.ndarray) -> np.ndarray:
    """A C-contiguous little-endian array's bytes, as a flat uint8 view."""
    return to_wire_array(array).reshape(-1).view(np.uint8)


def _matching(
    base: np.ndarray | None, dtype: np.dtype[Any], shape: tuple[int, ...]
) -> np.ndarray | None:
    """The base tensor to XOR a tensor of ``dtype`` and ``shape`` against, or None.

    A float base of another float dtype (a float64 initial model sent as plain JSON, for
    float32 updates) is cast to ``dtype``: numpy's rounding makes the same array on
    both ends, and the crc32 of the rebuilt tensor would tell if it did not.
    """
    if base is None or base.shape != shape:
        return None
    if base.dtype.newbyteorder("<") == dtype.newbyteorder("<"):
        return to_wire_array(base)
    if base.dtype.kind == "f" and dtype.kind == "f":
        return to_wire_array(base.astype(dtype))
    return None


def _planes(own: np.ndarray, reference: np.ndarray | None, dtype: np.dtype[Any]) -> np.ndarray:
    """The XOR of a tensor's bytes with its reference's (if any), grouped by byte plane.

    Byte 0 of every value, then byte 1... XOR and regrouping are one pass into one new
    array: on this kind of machine a fresh array's page faults cost more than the pass.
    """
    itemsize = dtype.itemsize
    planes = np.empty((itemsize, own.size // itemsize), np.uint8)
    if reference is None:
        np.copyto(planes, own.reshape(-1, itemsize).T)
    else:
        np.bitwise_xor(own.reshape(-1, itemsize).T, reference.reshape(-1, itemsize).T, out=planes)
    return planes


def _unplaned(planes: np.ndarray, reference: np.ndarray | None, dtype: np.dtype[Any]) -> np.ndarray:
    """Undo :func:`_planes`: a new writable array of the tensor's bytes, in order."""
    itemsize = dtype.itemsize
    own = np.empty(planes.size, np.uint8)
    grouped = planes.reshape(itemsize, -1).T
    if reference is None:
        np.copyto(own.reshape(-1, itemsize), grouped)
    else:
        np.bitwise_xor(grouped, reference.reshape(-1, itemsize), out=own.reshape(-1, itemsize))
    return own


def _check_entries(entries: list[dict[str, Any]]) -> None:
    """Check what the delta codec adds to each tensor's map."""
    for entry in entries:
        if entry["mode"] not in ("xor", "raw") or type(entry["crc32"]) is not int:
            raise DecodeError(f"delta manifest entry is malformed: {entry!r:.200}")


@hookimpl
def fma_connect_register_codecs(registry: Any) -> None:
    """Register the ``delta`` codec."""
    registry.add(XorDeltaCodec())
