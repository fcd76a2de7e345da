"""The ``msgpack`` codec: a small msgpack header followed by the tensors' raw bytes.

Layout of a body (format version 2)::

    header     msgpack map {"codec": "msgpack", "format_version": 2,
                            "tensors": [{"name", "dtype", "shape", "offset", "nbytes",
                                         "crc32"}, ...]}
    checksum   crc32 (zlib) of the header's bytes, 4 bytes big-endian
    padding    zeros up to a multiple of 64 bytes      <- the data region starts here
    tensors    each one's raw bytes at its 64-byte aligned ``offset`` in the data region

Format version 1, still decoded, is the same without the checksum.

The tensor bytes stay outside msgpack, so encoding hands the arrays' own buffers to
the transport (no join, no copy for C-contiguous little-endian input) and decoding
makes arrays that are views into the received buffer: writable when the buffer is
writable (a ``bytearray`` or writable mmap, as the client provides), read-only over
``bytes``. There is no size limit per tensor (msgpack's 4 GiB ``bin`` limit does not
apply). ``crc32`` (zlib) of each tensor's bytes is checked on decode, so truncation
and corruption in transit are reported as such. The checksum is computed with ISA-L
(the ``isal`` dependency, ~12 GB/s on this project's 2-core benchmark machine), else,
where it cannot be installed, with zlib (~3.7 GB/s): the same values.

The header's checksum makes every single flipped bit before the data region a
``DecodeError`` (the names, dtypes and shapes are the header's):

* in the header, when it still reads with the same length: crc32 catches every
  single-bit error (and every burst of up to 32 bits);
* in the header, when it then reads differently (a length or a count changed): it is
  malformed, or it ends elsewhere, and then the 4 bytes read as its checksum and the
  bytes that must be zero padding are not those written (they match by chance once
  in 2^32);
* in ``format_version``: a flipped 2 (0b10) reads 0, 3, 6, 10, 18, 34 or 66, refused
  as unknown versions (the error names it), or 0x82, a map: malformed. It never reads
  1, so a damaged version-2 body is never taken for a version-1 one, which has no
  header checksum;
* in the checksum: it no longer matches; in the padding: it must be zero.

``decode(payload, max_tensors=n)`` refuses a header listing more than ``n`` tensors
(:class:`~fma_connect.exceptions.TooManyTensorsError`) as soon as the list's length is
read, before any descriptor or array is built, hence before the checksum (which needs
the whole header) is verified: a damaged count is refused either way.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import msgpack
import numpy as np

from ..dtypes import dtype_from_tag, tag_of, to_wire_array
from ..exceptions import DecodeError, TooManyTensorsError
from ..hookspecs import hookimpl
from .base import Tensors, check_max_tensors, check_version
from .layout import LaidTensor, Layout

__all__ = ["MsgpackCodec"]

#: The format version written; :data:`READ_VERSIONS` are those decoded.
FORMAT_VERSION = 2
READ_VERSIONS = (1, 2)
_CHECKSUM_BYTES = 4
_ALIGN = 64
_MAX_HEADER = 64 << 20  # 64 MiB of descriptors is ~500k tensors; more is hostile
_MAX_NDIM = 64
_HEADER_KEYS = {"codec", "format_version", "tensors"}
_TENSOR_KEYS = {"name", "dtype", "shape", "offset", "nbytes", "crc32"}


def _fastest_crc32() -> Callable[[Any], int]:
    # ISA-L's crc32 is zlib's (same polynomial and values), several times faster.
    try:
        from isal import isal_zlib
    except ImportError:
        return zlib.crc32
    crc: Callable[[Any], int] = isal_zlib.crc32
    return crc


crc32 = _fastest_crc32()


class MsgpackCodec:
    """msgpack header + raw little-endian tensor bytes; lossless, dtype/shape/names kept."""

    name = "msgpack"
    media_type = "application/vnd.fma-connect.msgpack"
    lossless = True
    json_native = False

    def encode(self, tensors: Sequence[tuple[str, np.ndarray]]) -> list[Any]:
        """Return ``[header, checksum + padding, tensor bytes, padding, ...]``, not joined."""
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
                    "crc32": crc32(raw),
                }
            )
            buffers.append(raw)
            offset = _align(offset + raw.nbytes)
        header = msgpack.packb(
            {"codec": self.name, "format_version": FORMAT_VERSION, "tensors": descriptors}
        )
        end = len(header) + _CHECKSUM_BYTES
        checksum = crc32(header).to_bytes(_CHECKSUM_BYTES, "big")
        chunks: list[Any] = [header, checksum + bytes(_align(end) - end)]
        for descriptor, raw in zip(descriptors, buffers, strict=True):
            chunks.append(raw)
            pad = _align(raw.nbytes) - raw.nbytes
            if pad and descriptor is not descriptors[-1]:
                chunks.append(bytes(pad))
        return chunks

    def decode(self, payload: Any, *, max_tensors: int | None = None) -> Tensors:
        """Decode a body into arrays that view ``payload`` (see the module notes).

        Args:
            payload: The body, bytes-like.
            max_tensors: Refuse a header that lists more tensors than this, before
                building any (None: no bound).

        Raises:
            TooManyTensorsError: the header lists more than ``max_tensors`` tensors.
            DecodeError: the body is corrupt, truncated or of an unknown format version.
        """
        try:
            view = memoryview(payload).cast("B")
        except TypeError as exc:
            raise DecodeError(
                f"msgpack payload must be bytes-like, got {type(payload).__name__}"
            ) from exc
        header, header_len = _read_header(view, max_tensors)
        start = _data_start(view, header, header_len, view.nbytes)
        laid = _laid(header, self.name, start, view.nbytes)
        out: Tensors = []
        for i, t in enumerate(laid):
            raw = view[t.start : t.start + t.nbytes]
            if crc32(raw) != t.crc32:
                raise DecodeError(
                    f"msgpack tensor {i} ({t.name!r}) is corrupt: its crc32 does not match"
                )
            try:
                array = np.frombuffer(raw, t.dtype, math.prod(t.shape)).reshape(t.shape)
            except (ValueError, OverflowError) as exc:  # e.g. [0, 2**63]: no array has it
                raise DecodeError(
                    f"msgpack tensor {i} ({t.name!r}): shape {list(t.shape)} is invalid: {exc}"
                ) from exc
            out.append((t.name, array))
        _check_zeros(view[_end(laid, start) :], "the padding after the last tensor")
        return out

    def layout(self, head: memoryview, length: int) -> Layout | int | None:
        """Where the tensors of a body of ``length`` bytes are, from its first bytes.

        See :mod:`fma_connect.codecs.layout`. The head is checked as :meth:`decode`
        checks it (header, its checksum, the padding after it), and every tensor must
        fit in the body; the tensors' crc32 are for the receiver to check.

        Returns:
            The layout; the head bytes needed, when ``head`` is shorter; None when the
            tensors' bytes are not in order one after the other (then decode the body).

        Raises:
            DecodeError: the head is damaged or not this codec's.
        """
        try:
            header, header_len = _HeaderReader(head, head.nbytes, None).header()
        except msgpack.OutOfData:
            if head.nbytes < min(length, _MAX_HEADER):
                return min(head.nbytes * 4, length, _MAX_HEADER)
            limit = "is truncated" if head.nbytes < _MAX_HEADER else f"exceeds {_MAX_HEADER} bytes"
            raise DecodeError(f"msgpack payload header {limit} (body of {length} bytes)") from None
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            raise DecodeError(f"msgpack payload header is malformed: {exc}") from exc
        need = _align(header_len + _CHECKSUM_BYTES)
        if head.nbytes < min(need, length):
            return min(need, length)
        start = _data_start(head, header, header_len, length)
        laid = _laid(header, self.name, start, length)
        at = start
        for t in laid:
            if t.start < at:
                return None  # overlapping or out of order: only a whole body can hold them
            at = t.start + t.nbytes
        return Layout(tuple(laid), length, start, crc32)


def _data_start(view: memoryview, header: Any, header_len: int, length: int) -> int:
    """Check what follows a header of a body of ``length`` bytes (``view`` holds at
    least up to the data region); return where its data region starts."""
    version = _format_version(header)
    header_end = header_len if version == 1 else _check_checksum(view, header_len)
    start = _align(header_end)
    if start > length:  # the encoder always writes the padding
        raise DecodeError(
            f"msgpack payload is truncated: its data region starts at byte {start}, "
            f"the body has {length}"
        )
    # Version 1 has no header checksum: damage that shortens its header (a tensor
    # count flipped lower) leaves the header's tail where the zero padding must be.
    _check_zeros(view[header_end:start], "the padding after the header")
    return start


def _laid(header: dict[str, Any], name: str, start: int, length: int) -> list[LaidTensor]:
    """The header's tensors, each checked to fit a body of ``length`` bytes."""
    data_len = length - start
    laid = []
    for i, d in enumerate(_tensor_descriptors(header, name)):
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
                f"{start + d['offset'] + d['nbytes']}, the body has {length}"
            )
        laid.append(
            LaidTensor(
                d["name"], dtype, tuple(d["shape"]), start + d["offset"], d["nbytes"], d["crc32"]
            )
        )
    # Bytes past the last tensor can only be its alignment padding.
    if length - _end(laid, start) >= _ALIGN:
        raise DecodeError(
            f"msgpack payload is corrupt: {length - _end(laid, start)} bytes follow its last tensor"
        )
    return laid


def _end(laid: Sequence[LaidTensor], start: int) -> int:
    """Where the last tensor's bytes end (the data region's start if there are none)."""
    return max((t.start + t.nbytes for t in laid), default=start)


def _align(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


def _check_zeros(padding: memoryview, what: str) -> None:
    if padding.tobytes().strip(b"\x00"):
        raise DecodeError(f"msgpack payload is corrupt: {what} is not zero")


def _check_checksum(view: memoryview, header_len: int) -> int:
    """Check the crc32 that follows a version-2 header; return where it ends."""
    end = header_len + _CHECKSUM_BYTES
    if end > view.nbytes:
        raise DecodeError(
            f"msgpack payload is truncated: it ends inside its header's checksum "
            f"(body of {view.nbytes} bytes)"
        )
    if int.from_bytes(view[header_len:end], "big") != crc32(view[:header_len]):
        raise DecodeError("msgpack payload header is corrupt: its crc32 does not match")
    return end


def _read_header(view: memoryview, max_tensors: int | None) -> tuple[Any, int]:
    # A prefix of the body, 4x longer after each OutOfData: a huge body is never copied
    # whole into the unpacker, and the rereads cost at most a third of the last read.
    fed = min(1 << 20, view.nbytes, _MAX_HEADER)
    while True:
        try:
            return _HeaderReader(view, fed, max_tensors).header()
        except TooManyTensorsError:
            raise  # a DecodeError, hence a ValueError: not "malformed"
        except msgpack.OutOfData:
            if fed == min(view.nbytes, _MAX_HEADER):
                limit = "is truncated" if fed < _MAX_HEADER else f"exceeds {_MAX_HEADER} bytes"
                raise DecodeError(
                    f"msgpack payload header {limit} (body of {view.nbytes} bytes)"
                ) from None
            fed = min(fed * 4, view.nbytes, _MAX_HEADER)
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            raise DecodeError(f"msgpack payload header is malformed: {exc}") from exc


# First bytes of msgpack maps, arrays, and values that hold no other value (ext excluded).
_MAPS = frozenset([*range(0x80, 0x90), 0xDE, 0xDF])
_ARRAYS = frozenset([*range(0x90, 0xA0), 0xDC, 0xDD])
_SCALARS = frozenset(
    [
        *range(0x00, 0x80),  # positive fixint
        *range(0xA0, 0xC1),  # fixstr, nil
        *range(0xC2, 0xC7),  # false, true, bin
        *range(0xCA, 0xD4),  # float, uint, int
        *range(0xD9, 0xDC),  # str
        *range(0xE0, 0x100),  # negative fixint
    ]
)


class _HeaderReader:
    """Reads a header value by value, so maps and arrays are only where the format has them.

    ``msgpack.unpack`` of a whole hostile header would pre-allocate every container it
    claims: thousands of nested arrays, each claiming 65535 items, make ~80 MB from a
    3 KB body. Here containers are opened by their headers alone (nothing allocated),
    their sizes checked against the body, and only scalars are unpacked.
    """

    def __init__(self, view: memoryview, fed: int, max_tensors: int | None) -> None:
        self._view = view
        self._fed = fed
        self._max_tensors = max_tensors
        self._unpacker = msgpack.Unpacker(raw=False, max_buffer_size=_MAX_HEADER)
        self._unpacker.feed(view[:fed])

    def header(self) -> tuple[dict[Any, Any], int]:
        header: dict[Any, Any] = {}
        for _ in range(self._open(_MAPS, "the header", len(_HEADER_KEYS))):
            key = self._scalar()
            if key == "tensors" and self._peek() in _ARRAYS:
                count = self._open(_ARRAYS, key)
                # Before the descriptors: decoding 10^5 tensors costs ~150 MB and seconds.
                check_max_tensors(count, self._max_tensors)
                header[key] = [self._descriptor() for _ in range(count)]
            else:
                header[key] = self._scalar()
        return header, self._unpacker.tell()

    def _descriptor(self) -> dict[Any, Any]:
        descriptor: dict[Any, Any] = {}
        for _ in range(self._open(_MAPS, "a tensor descriptor", len(_TENSOR_KEYS))):
            key = self._scalar()
            if key == "shape" and self._peek() in _ARRAYS:
                ndim = self._open(_ARRAYS, "a shape", _MAX_NDIM)
                descriptor[key] = [self._scalar() for _ in range(ndim)]
            else:
                descriptor[key] = self._scalar()
        return descriptor

    def _peek(self) -> int:
        at = self._unpacker.tell()
        if at >= self._fed:
            raise msgpack.OutOfData
        return int(self._view[at])

    def _open(self, kinds: frozenset[int], what: str, most: int | None = None) -> int:
        if self._peek() not in kinds:
            kind = "map" if kinds is _MAPS else "array"
            raise ValueError(f"expected {what} to be a {kind}")
        if kinds is _MAPS:
            count: int = self._unpacker.read_map_header()
        else:
            count = self._unpacker.read_array_header()
        # Each entry takes at least a byte: a count beyond the body is a lie.
        limit = most if most is not None else self._view.nbytes - self._unpacker.tell()
        if count > limit:
            raise ValueError(f"{what} claims {count} entries, at most {limit} can be there")
        return count

    def _scalar(self) -> Any:
        at = self._unpacker.tell()
        if at >= self._fed:
            raise msgpack.OutOfData
        if self._view[at] not in _SCALARS:
            raise ValueError("expected a string or a number, found a map, array or extension")
        return self._unpacker.unpack()


def _format_version(header: Any) -> int:
    """The version of a header with the right keys (before its checksum is checked)."""
    if not isinstance(header, dict) or set(header) != _HEADER_KEYS:
        raise DecodeError(
            "not an fma_connect msgpack payload: expected a header map with keys "
            f"{sorted(_HEADER_KEYS)}, got {type(header).__name__}"
            + (f" with keys {sorted(map(str, header))}" if isinstance(header, dict) else "")
        )
    version = header["format_version"]
    if type(version) is not int:
        raise DecodeError(f"msgpack format_version must be an integer, got {version!r}")
    check_version("msgpack", version, READ_VERSIONS)
    return version


def _tensor_descriptors(header: dict[str, Any], name: str) -> list[dict[str, Any]]:
    if header["codec"] != name:
        raise DecodeError(f"payload is tagged {header['codec']!r}, not {name!r}")
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
