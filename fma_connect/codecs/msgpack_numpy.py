"""The ``msgpack`` codec: a small msgpack header followed by the tensors' raw bytes.

Layout of a body (format version 1)::

    msgpack map  {"codec": "msgpack", "format_version": 1,
                  "tensors": [{"name", "dtype", "shape", "offset", "nbytes", "crc32"}, ...]}
    zero padding to a multiple of 64 bytes      <- the data region starts here
    tensor bytes, each starting at a 64-byte aligned ``offset`` in the data region

The tensor bytes stay outside msgpack, so encoding hands the arrays' own buffers to
the transport (no join, no copy for C-contiguous little-endian input) and decoding
makes arrays that are views into the received buffer: writable when the buffer is
writable (a ``bytearray`` or writable mmap, as the client provides), read-only over
``bytes``. There is no size limit per tensor (msgpack's 4 GiB ``bin`` limit does not
apply). ``crc32`` (zlib) of each tensor's bytes is checked on decode, so truncation
and corruption in transit are reported as such.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from typing import Any

import msgpack
import numpy as np

from ..dtypes import dtype_from_tag, tag_of, to_wire_array
from ..exceptions import DecodeError
from ..hookspecs import hookimpl
from .base import Tensors, check_version

__all__ = ["MsgpackCodec"]

FORMAT_VERSION = 1
_ALIGN = 64
_MAX_HEADER = 64 << 20  # 64 MiB of descriptors is ~500k tensors; more is hostile
_MAX_NDIM = 64
_HEADER_KEYS = {"codec", "format_version", "tensors"}
_TENSOR_KEYS = {"name", "dtype", "shape", "offset", "nbytes", "crc32"}


class MsgpackCodec:
    """msgpack header + raw little-endian tensor bytes; lossless, dtype/shape/names kept."""

    name = "msgpack"
    media_type = "application/vnd.fma-connect.msgpack"
    lossless = True
    json_native = False

    def encode(self, tensors: Sequence[tuple[str, np.ndarray]]) -> list[Any]:
        """Return ``[header, padding, tensor bytes, padding, ...]`` without joining them."""
        descriptors = []
        buffers: list[memoryview] = []
        offset = 0
        for name, array in tensors:
            array = to_wire_array(array, name)
            raw = array.reshape(-1).view(np.uint8).data
            descriptors.append(
                {
                    "name": name,
                    "dtype": tag_of(array.dtype, name),
                    "shape": list(array.shape),
                    "offset": offset,
                    "nbytes": raw.nbytes,
                    "crc32": zlib.crc32(raw),
                }
            )
            buffers.append(raw)
            offset = _align(offset + raw.nbytes)
        header = msgpack.packb(
            {"codec": self.name, "format_version": FORMAT_VERSION, "tensors": descriptors}
        )
        chunks: list[Any] = [header, bytes(_align(len(header)) - len(header))]
        for descriptor, raw in zip(descriptors, buffers, strict=True):
            chunks.append(raw)
            pad = _align(raw.nbytes) - raw.nbytes
            if pad and descriptor is not descriptors[-1]:
                chunks.append(bytes(pad))
        return chunks

    def decode(self, payload: Any) -> Tensors:
        """Decode a body into arrays that view ``payload`` (see the module notes)."""
        try:
            view = memoryview(payload).cast("B")
        except TypeError as exc:
            raise DecodeError(
                f"msgpack payload must be bytes-like, got {type(payload).__name__}"
            ) from exc
        header, header_len = _read_header(view)
        start = _align(header_len)
        data_len = view.nbytes - start
        out: Tensors = []
        for i, d in enumerate(_tensor_descriptors(header, self.name)):
            where = f"tensor {i} ({d['name']!r})"
            dtype = dtype_from_tag(d["dtype"])
            count = math.prod(d["shape"])
            if d["nbytes"] != count * dtype.itemsize:
                raise DecodeError(
                    f"msgpack {where}: shape {d['shape']} of {d['dtype']} needs "
                    f"{count * dtype.itemsize} bytes, header says {d['nbytes']}"
                )
            if d["offset"] + d["nbytes"] > data_len:
                raise DecodeError(
                    f"msgpack payload is truncated: {where} ends at byte "
                    f"{start + d['offset'] + d['nbytes']}, the body has {view.nbytes}"
                )
            raw = view[start + d["offset"] : start + d["offset"] + d["nbytes"]]
            if zlib.crc32(raw) != d["crc32"]:
                raise DecodeError(f"msgpack {where} is corrupt: its crc32 does not match")
            array = np.frombuffer(raw, dtype=dtype, count=count).reshape(tuple(d["shape"]))
            out.append((d["name"], array))
        return out


def _align(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


def _read_header(view: memoryview) -> tuple[Any, int]:
    # Feed in growing slices so a huge body is never copied into the unpacker.
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=_MAX_HEADER, strict_map_key=True)
    fed, step = 0, 1 << 16
    while True:
        chunk = view[fed : min(fed + step, view.nbytes, _MAX_HEADER)]
        if not chunk.nbytes:
            limit = "is truncated" if fed < _MAX_HEADER else f"exceeds {_MAX_HEADER} bytes"
            raise DecodeError(f"msgpack payload header {limit} (body of {view.nbytes} bytes)")
        unpacker.feed(chunk)
        fed += chunk.nbytes
        step *= 2
        try:
            header = unpacker.unpack()
        except msgpack.OutOfData:
            continue
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            raise DecodeError(f"msgpack payload header is malformed: {exc}") from exc
        return header, unpacker.tell()


def _tensor_descriptors(header: Any, name: str) -> list[dict[str, Any]]:
    if not isinstance(header, dict) or set(header) != _HEADER_KEYS:
        raise DecodeError(
            "not an fma_connect msgpack payload: expected a header map with keys "
            f"{sorted(_HEADER_KEYS)}, got {type(header).__name__}"
            + (f" with keys {sorted(map(str, header))}" if isinstance(header, dict) else "")
        )
    if header["codec"] != name:
        raise DecodeError(f"payload is tagged {header['codec']!r}, not {name!r}")
    version = header["format_version"]
    if type(version) is not int:
        raise DecodeError(f"msgpack format_version must be an integer, got {version!r}")
    check_version(name, version, FORMAT_VERSION)
    tensors = header["tensors"]
    if not isinstance(tensors, list):
        raise DecodeError("msgpack header 'tensors' must be a list")
    for i, d in enumerate(tensors):
        if not isinstance(d, dict) or set(d) != _TENSOR_KEYS:
            raise DecodeError(f"msgpack tensor {i}: expected keys {sorted(_TENSOR_KEYS)}")
        shape = d["shape"]
        ints = [d["offset"], d["nbytes"], d["crc32"], *(shape if isinstance(shape, list) else [])]
        if (
            not isinstance(d["name"], str)
            or not isinstance(shape, list)
            or len(shape) > _MAX_NDIM
            or not all(type(v) is int and v >= 0 for v in ints)
        ):
            raise DecodeError(
                f"msgpack tensor {i}: expected a string name, a shape of at most {_MAX_NDIM} "
                "non-negative ints and non-negative integer offset/nbytes/crc32"
            )
    return tensors


@hookimpl
def fma_connect_register_codecs(registry: Any) -> None:
    """Register the ``msgpack`` codec."""
    registry.add(MsgpackCodec())
