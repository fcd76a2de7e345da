"""The ``npz-b64`` codec: an ``.npz`` archive, base64-encoded, inside a tagged JSON object.

The payload is JSON-native: it travels in the ``data`` field of an ordinary JSON body,
so a JSON-only service (the stock FMA service) stores and serves it verbatim, while
dtypes, shapes and names survive. The wire value is::

    {"codec": "npz-b64", "format_version": 1, "payload": "<base64 of an npz archive>"}

The archive holds ``t0, t1, ...`` (uncompressed, C order, little-endian) and a
``manifest`` entry: the UTF-8 JSON ``{"names": [...], "dtypes": [...]}``. The manifest
carries the dtype tags because ``.npy`` has no name for bfloat16; such tensors are
stored as same-width unsigned integers and viewed back.

Decoding trusts nothing in the archive: only stored (uncompressed) ``.npy`` entries are
read, so a payload cannot expand beyond its own size; each entry's header is checked
(numeric little-endian dtype, non-negative shape) and must account for exactly the
bytes the entry holds *before* any array is allocated, so a header claiming 10^12
elements is refused without allocating; object, void and structured dtypes are refused
(nothing is ever unpickled); and every entry is read to its end, so zip's CRC-32 of
the entry is verified and corruption is reported as such. ``decode(payload,
max_tensors=n)`` counts the archive directory's tensor entries before reading any, and
refuses more than ``n`` (:class:`~fma_connect.exceptions.TooManyTensorsError`).
"""

from __future__ import annotations

import base64
import io
import json
import math
import struct
import zipfile
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson

from ..dtypes import dtype_from_tag, tag_of, to_wire_array
from ..exceptions import DecodeError
from ..hookspecs import hookimpl
from .base import Tensors, check_max_tensors, check_version, read_tag, tag

__all__ = ["NpzBase64Codec"]

FORMAT_VERSION = 1
_MANIFEST = "manifest"
_SUFFIX = ".npy"
_NPY_HEADER_MAX = 10_000  # numpy's own limit for headers it parses
_NPY_HEADER_READERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


class NpzBase64Codec:
    """Base64 npz in a tagged JSON object; lossless, stored verbatim by JSON-only services."""

    name = "npz-b64"
    media_type = "application/json"
    lossless = True
    json_native = True

    def encode(self, tensors: Sequence[tuple[str, np.ndarray]]) -> dict[str, Any]:
        """Return the tagged object holding every tensor."""
        names, tags, arrays = [], [], {}
        for i, (name, array) in enumerate(tensors):
            array = to_wire_array(array, name)
            tags.append(tag_of(array.dtype, name))
            names.append(name)
            if array.dtype.kind == "V":  # ml_dtypes floats: store the bits
                array = array.view(f"<u{array.dtype.itemsize}")
            arrays[f"t{i}"] = array
        manifest = json.dumps({"names": names, "dtypes": tags}).encode()
        arrays[_MANIFEST] = np.frombuffer(manifest, dtype=np.uint8)
        buffer = io.BytesIO()
        np.savez(buffer, allow_pickle=False, **arrays)
        return tag(self.name, FORMAT_VERSION, base64.b64encode(buffer.getbuffer()).decode("ascii"))

    def decode(self, payload: Any, *, max_tensors: int | None = None) -> Tensors:
        """Decode a tagged object (as parsed from JSON) into named arrays.

        Args:
            payload: The tagged object.
            max_tensors: Refuse an archive whose directory lists more tensors than this,
                before reading any (None: no bound).

        Raises:
            TooManyTensorsError: the archive holds more than ``max_tensors`` tensors.
            DecodeError: the payload is corrupt, truncated or of an unknown format version.
        """
        tagged = read_tag(payload)
        if tagged is None or tagged[0] != self.name:
            raise DecodeError(
                "npz-b64 payload must be an object "
                '{"codec": "npz-b64", "format_version": 1, "payload": "<base64>"}'
            )
        check_version(self.name, tagged[1], FORMAT_VERSION)
        if not isinstance(tagged[2], str):
            raise DecodeError("npz-b64 'payload' must be a base64 string")
        try:
            raw = base64.b64decode(tagged[2], validate=True)
            with zipfile.ZipFile(io.BytesIO(raw)) as archive:
                # From the directory, parsed already: reading the entries costs ~10x more.
                manifest = _MANIFEST + _SUFFIX
                check_max_tensors(sum(n != manifest for n in archive.namelist()), max_tensors)
                entries = _entries(archive, len(raw))
                if _MANIFEST not in entries:
                    raise DecodeError("npz-b64 archive has no manifest entry")
                names, tags = _manifest(_read_npy(archive, entries[_MANIFEST]), set(entries))
                return [
                    _restore(i, name, t, _read_npy(archive, entries[f"t{i}"]))
                    for i, (name, t) in enumerate(zip(names, tags, strict=True))
                ]
        except DecodeError:
            raise
        except (
            ValueError,
            TypeError,
            KeyError,
            OSError,
            EOFError,
            struct.error,
            zipfile.BadZipFile,
            NotImplementedError,  # zipfile: an unknown zip version or compression method
            RuntimeError,  # zipfile: an encrypted entry; RecursionError
        ) as exc:
            raise DecodeError(f"npz-b64 payload is corrupt or truncated: {exc}") from exc


def _entries(archive: zipfile.ZipFile, body_bytes: int) -> dict[str, zipfile.ZipInfo]:
    """The archive's entries by name without ``.npy``; stored ones only, sizes bounded."""
    entries: dict[str, zipfile.ZipInfo] = {}
    for info in archive.infolist():
        # Stored entries cannot expand beyond the payload: no zip bomb gets through.
        if info.compress_type != zipfile.ZIP_STORED:
            raise DecodeError(
                f"npz-b64 entry {info.filename!r} is compressed; only stored ones are read"
            )
        if info.file_size > body_bytes or info.compress_size != info.file_size:
            raise DecodeError(
                f"npz-b64 payload is corrupt: entry {info.filename!r} claims {info.file_size} "
                f"bytes stored in {info.compress_size}, in an archive of {body_bytes} bytes"
            )
        if not info.filename.endswith(_SUFFIX):
            raise DecodeError(f"npz-b64 entry {info.filename!r} is not an .npy array")
        name = info.filename[: -len(_SUFFIX)]
        if name in entries:
            raise DecodeError(f"npz-b64 archive holds {info.filename!r} twice")
        entries[name] = info
    return entries


def _read_npy(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    """Read one ``.npy`` entry, checking its header before allocating anything."""
    where = f"npz-b64 entry {info.filename!r}"
    with archive.open(info) as file:
        version = np.lib.format.read_magic(file)
        reader = _NPY_HEADER_READERS.get(version)
        if reader is None:
            raise DecodeError(f"{where} has .npy format version {version}; expected 1.0 or 2.0")
        shape, fortran_order, dtype = reader(file, max_header_size=_NPY_HEADER_MAX)
        if dtype.kind not in "biufc" or dtype.fields is not None or dtype.byteorder == ">":
            raise DecodeError(
                f"npz-b64 payload is corrupt: {where} has dtype {dtype.str!r}; only little-endian "
                "numeric dtypes are read (nothing is ever unpickled)"
            )
        if not all(type(n) is int and 0 <= n < 2**63 for n in shape):
            raise DecodeError(f"npz-b64 payload is corrupt: {where} has the shape {shape!r}")
        nbytes = math.prod(shape) * dtype.itemsize
        held = info.file_size - file.tell()
        if nbytes != held:
            raise DecodeError(
                f"npz-b64 payload is corrupt or truncated: {where} declares shape {shape} of "
                f"{dtype}, {nbytes} bytes, but holds {held}"
            )
        buffer = bytearray(nbytes)  # bounded by the entry's size, hence by the payload's
        got = 0
        while got < nbytes:
            chunk = file.read(min(nbytes - got, 1 << 24))
            if not chunk:
                raise DecodeError(f"npz-b64 payload is truncated: {where} ends at byte {got}")
            buffer[got : got + len(chunk)] = chunk
            got += len(chunk)
        # Reading to the end of the entry makes zipfile compare its CRC-32.
        if file.read(1):
            raise DecodeError(f"npz-b64 payload is corrupt: {where} is longer than declared")
    array = np.frombuffer(buffer, dtype=dtype)
    if fortran_order:
        return array.reshape(shape[::-1]).transpose()
    return array.reshape(shape)


def _manifest(stored: np.ndarray, entries: set[str]) -> tuple[list[Any], list[Any]]:
    if stored.dtype != np.uint8 or stored.ndim != 1:
        raise DecodeError("npz-b64 manifest must be a 1-d uint8 array of UTF-8 JSON")
    # orjson bounds nesting depth (json would recurse until RecursionError).
    manifest = orjson.loads(stored.tobytes())
    if not isinstance(manifest, dict):
        raise DecodeError("npz-b64 manifest must be a JSON object")
    names, tags = manifest.get("names"), manifest.get("dtypes")
    if not (isinstance(names, list) and isinstance(tags, list) and len(names) == len(tags)):
        raise DecodeError("npz-b64 manifest must list as many names as dtypes")
    expected = {f"t{i}" for i in range(len(names))} | {_MANIFEST}
    if entries != expected:
        raise DecodeError(
            f"npz-b64 archive entries {sorted(entries)} do not match its manifest "
            f"of {len(names)} tensors"
        )
    return names, tags


def _restore(index: int, name: Any, dtype_tag: Any, stored: np.ndarray) -> tuple[str, np.ndarray]:
    if not isinstance(name, str):
        raise DecodeError(f"npz-b64 tensor {index}: name must be a string, got {name!r}")
    dtype = dtype_from_tag(dtype_tag)
    if dtype.kind == "V":
        if stored.dtype != np.dtype(f"<u{dtype.itemsize}"):
            raise DecodeError(
                f"npz-b64 tensor {name!r}: {dtype_tag} must be stored as uint{8 * dtype.itemsize}"
            )
        return name, stored.view(dtype)
    if stored.dtype != dtype:
        raise DecodeError(
            f"npz-b64 tensor {name!r}: manifest says {dtype_tag}, archive holds {stored.dtype}"
        )
    return name, stored


@hookimpl
def fma_connect_register_codecs(registry: Any) -> None:
    """Register the ``npz-b64`` codec."""
    registry.add(NpzBase64Codec())
