"""The ``safetensors`` codec: the request body is an ordinary ``.safetensors`` file.

Any safetensors reader (``safetensors.numpy.load``, ``safetensors.torch.load``...)
opens a body written by this codec. What safetensors itself cannot say lives in the
file's ``__metadata__``, under the key ``"fma_connect"``, as a JSON string
(format version 1)::

    {"codec": "safetensors", "format_version": 1,
     "tensors": [{"key": "...", "name": "...", "dtype": "float32", "crc32": 123}, ...]}

* **Order.** safetensors readers return tensors sorted by key; the list above is the
  caller's order, and decoding follows it.
* **Names.** Each tensor is stored under its own name when the names are unique and
  none is ``__metadata__`` (safetensors needs unique keys and reserves that one), so
  other tools see the real names. Otherwise every tensor is stored under its index
  (``"0"``, ``"1"``...) and the names live in the list only.
* **Dtypes.** Stored natively where safetensors has the type: every int and uint,
  bool, float16/32/64, bfloat16 (``BF16``), float8_e4m3fn, float8_e5m2 and complex64.
  safetensors has no complex128: such a tensor is stored as ``F64`` with a trailing
  axis of 2 (real, imaginary) and the list's ``dtype`` restores it, so the codec is
  lossless over every dtype fma_connect sends.
* **Layout.** Arrays are handed to safetensors C-contiguous and little-endian:
  safetensors reads an array's memory as it lies, so a Fortran-order or strided view
  would otherwise be written scrambled.
* **Integrity.** ``crc32`` (zlib) of each tensor's stored bytes is checked on decode.

A body without the ``"fma_connect"`` metadata (written by another tool) decodes too:
its tensors come back sorted by key, named by key, in their stored dtypes.

Costs: safetensors builds the body in one buffer (one copy of the tensors) and its
reader copies each tensor out of the body, so decoded arrays are writable and do not
view the received buffer.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import safetensors

from fma_connect import DecodeError, EncodeError, Tensors, hookimpl
from fma_connect.dtypes import dtype_from_tag, tag_of, to_wire_array

__all__ = ["FORMAT_VERSION", "SafetensorsCodec"]

FORMAT_VERSION = 1
_META_KEY = "fma_connect"
_RESERVED_KEY = "__metadata__"
_MAX_HEADER = 100_000_000  # safetensors refuses larger headers itself
_ENTRY_KEYS = {"key", "name", "dtype", "crc32"}

#: fma_connect dtype tag -> safetensors dtype, for the tags safetensors stores natively.
_NATIVE = {
    "bool": "BOOL",
    "int8": "I8",
    "int16": "I16",
    "int32": "I32",
    "int64": "I64",
    "uint8": "U8",
    "uint16": "U16",
    "uint32": "U32",
    "uint64": "U64",
    "float16": "F16",
    "float32": "F32",
    "float64": "F64",
    "bfloat16": "BF16",
    "float8_e4m3fn": "F8_E4M3",
    "float8_e5m2": "F8_E5M2",
    "complex64": "C64",
}
_FROM_SAFETENSORS = {stored: tag for tag, stored in _NATIVE.items()}
# safetensors ships no annotation for deserialize: (file bytes) -> [(key, {shape, dtype, data})].
_deserialize: Callable[[bytes], list[tuple[str, dict[str, Any]]]] = safetensors.deserialize
#: Tags stored as pairs of a real dtype along a trailing axis of 2.
_PAIRS = {"complex128": "float64"}


class SafetensorsCodec:
    """A standard safetensors file with names, order and dtypes in its metadata; lossless."""

    name = "safetensors"
    media_type = "application/vnd.fma-connect.safetensors"
    lossless = True
    json_native = False

    def encode(self, tensors: Sequence[tuple[str, np.ndarray]]) -> list[bytes]:
        """Return the safetensors file as one chunk.

        Raises:
            EncodeError: a tensor's dtype cannot cross the wire, or safetensors refused it.
        """
        arrays = [(name, to_wire_array(array, name)) for name, array in tensors]
        keys = _keys([name for name, _ in arrays])
        entries: list[dict[str, Any]] = []
        specs: dict[str, safetensors.TensorSpec] = {}
        keep_alive: list[np.ndarray] = []  # safetensors reads these through raw pointers
        for key, (name, array) in zip(keys, arrays, strict=True):
            dtype_tag = tag_of(array.dtype, name)
            stored = _stored_form(array, dtype_tag)
            keep_alive.append(stored)
            entries.append(
                {"key": key, "name": name, "dtype": dtype_tag, "crc32": zlib.crc32(_raw(stored))}
            )
            specs[key] = safetensors.TensorSpec(
                dtype=stored.dtype.name,
                shape=list(stored.shape),
                data_ptr=stored.ctypes.data,
                data_len=stored.nbytes,
            )
        manifest = {"codec": self.name, "format_version": FORMAT_VERSION, "tensors": entries}
        try:
            body = safetensors.serialize(specs, metadata={_META_KEY: json.dumps(manifest)})
        except (safetensors.SafetensorError, ValueError, TypeError) as exc:
            raise EncodeError(f"safetensors refused the tensors {keys!r}: {exc}") from exc
        del keep_alive
        return [body]

    def decode(self, payload: Any) -> Tensors:
        """Decode a safetensors body (ours, or any other tool's) into named arrays."""
        try:
            view = memoryview(payload).cast("B")
        except TypeError as exc:
            raise DecodeError(
                f"safetensors payload must be bytes-like, got {type(payload).__name__}"
            ) from exc
        # The safetensors reader validates the header (offsets, sizes, dtypes) first.
        body = payload if isinstance(payload, bytes) else view.tobytes()
        try:
            stored = dict(_deserialize(body))
        except (safetensors.SafetensorError, ValueError, TypeError, OverflowError) as exc:
            raise DecodeError(f"not a valid safetensors payload: {exc}") from exc
        metadata = _metadata(view)
        if metadata is None or _META_KEY not in metadata:
            return [_foreign(key, stored[key]) for key in sorted(stored)]
        entries = _entries(metadata[_META_KEY], self.name)
        keys = [entry["key"] for entry in entries]
        if sorted(keys) != sorted(stored):
            raise DecodeError(
                f"safetensors metadata lists {len(keys)} tensors that do not match the "
                f"{len(stored)} stored in the file"
            )
        return [_restore(i, entry, stored[entry["key"]]) for i, entry in enumerate(entries)]


def _keys(names: list[str]) -> list[str]:
    if len(set(names)) == len(names) and _RESERVED_KEY not in names:
        return names
    return [str(i) for i in range(len(names))]


def _stored_form(array: np.ndarray, dtype_tag: str) -> np.ndarray:
    if dtype_tag in _PAIRS:
        # A 0-d array cannot change item size by .view(); the flat one can.
        real = array.reshape(-1).view(np.dtype(_PAIRS[dtype_tag]).newbyteorder("<"))
        return real.reshape((*array.shape, 2))
    return array


def _raw(array: np.ndarray) -> memoryview:
    return array.reshape(-1).view(np.uint8).data


def _metadata(view: memoryview) -> dict[str, Any] | None:
    # safetensors.deserialize has accepted the header already: an 8-byte little-endian
    # length, then a flat JSON object. It does not return __metadata__, so read it here.
    size = int.from_bytes(view[:8], "little")
    if size > _MAX_HEADER or 8 + size > view.nbytes:
        raise DecodeError(f"safetensors header length {size} does not fit the payload")
    try:
        header = json.loads(view[8 : 8 + size].tobytes())
    except (ValueError, RecursionError) as exc:
        raise DecodeError(f"safetensors header is not JSON: {exc}") from exc
    metadata = header.get(_RESERVED_KEY) if isinstance(header, dict) else None
    if metadata is not None and not isinstance(metadata, dict):
        raise DecodeError("safetensors __metadata__ must be an object of strings")
    return metadata


def _entries(text: Any, codec: str) -> list[dict[str, Any]]:
    try:
        manifest = json.loads(text) if isinstance(text, str) else None
    except (ValueError, RecursionError) as exc:
        raise DecodeError(f"safetensors metadata {_META_KEY!r} is not JSON: {exc}") from exc
    if not isinstance(manifest, dict) or not {"codec", "format_version", "tensors"} <= set(
        manifest
    ):
        raise DecodeError(
            f"safetensors metadata {_META_KEY!r} must be a JSON object with codec, "
            "format_version and tensors"
        )
    if manifest["codec"] != codec:
        raise DecodeError(f"safetensors metadata is tagged {manifest['codec']!r}, not {codec!r}")
    version = manifest["format_version"]
    if version != FORMAT_VERSION or type(version) is not int:
        raise DecodeError(
            f"safetensors payload has fma_connect format version {version!r}, but this "
            f"fma-connect-safetensors reads version {FORMAT_VERSION}; upgrade the plugin "
            "on this side"
        )
    entries = manifest["tensors"]
    if not isinstance(entries, list):
        raise DecodeError("safetensors metadata 'tensors' must be a list")
    for i, entry in enumerate(entries):
        if (
            not isinstance(entry, dict)
            or set(entry) != _ENTRY_KEYS
            or not isinstance(entry["key"], str)
            or not isinstance(entry["name"], str)
            or type(entry["crc32"]) is not int
        ):
            raise DecodeError(
                f"safetensors metadata tensor {i}: expected string key and name, a dtype "
                "and an integer crc32"
            )
    if len({entry["key"] for entry in entries}) != len(entries):
        raise DecodeError("safetensors metadata lists a key twice")
    return entries


def _restore(index: int, entry: dict[str, Any], stored: dict[str, Any]) -> tuple[str, np.ndarray]:
    name, dtype_tag = entry["name"], entry["dtype"]
    where = f"tensor {index} ({name!r})"
    dtype = dtype_from_tag(dtype_tag)
    shape = list(stored["shape"])
    if dtype_tag in _PAIRS:
        expected = _NATIVE[_PAIRS[dtype_tag]]
        if not shape or shape[-1] != 2:
            raise DecodeError(f"safetensors {where}: {dtype_tag} needs a trailing axis of 2")
        shape = shape[:-1]
    else:
        expected = _NATIVE[dtype_tag]
    if stored["dtype"] != expected:
        raise DecodeError(
            f"safetensors {where}: metadata says {dtype_tag} (stored as {expected}), "
            f"the file holds {stored['dtype']}"
        )
    data = stored["data"]
    if zlib.crc32(data) != entry["crc32"]:
        raise DecodeError(f"safetensors {where} is corrupt: its crc32 does not match")
    return name, np.frombuffer(data, dtype=dtype).reshape(shape)


def _foreign(key: str, stored: dict[str, Any]) -> tuple[str, np.ndarray]:
    dtype_tag = _FROM_SAFETENSORS.get(stored["dtype"])
    if dtype_tag is None:
        raise DecodeError(
            f"safetensors tensor {key!r} has dtype {stored['dtype']}, which fma_connect "
            f"does not read; supported: {', '.join(_FROM_SAFETENSORS)}"
        )
    array = np.frombuffer(stored["data"], dtype=dtype_from_tag(dtype_tag))
    return key, array.reshape(stored["shape"])


@hookimpl
def fma_connect_register_codecs(registry: Any) -> None:
    """Register the ``safetensors`` codec."""
    registry.add(SafetensorsCodec())
