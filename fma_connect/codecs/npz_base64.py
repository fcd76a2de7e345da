"""The ``npz-b64`` codec: an ``.npz`` archive, base64-encoded, inside a tagged JSON object.

The payload is JSON-native: it travels in the ``data`` field of an ordinary JSON body,
so a JSON-only service (the stock FMA service) stores and serves it verbatim, while
dtypes, shapes and names survive. The wire value is::

    {"codec": "npz-b64", "format_version": 1, "payload": "<base64 of an npz archive>"}

The archive holds ``t0, t1, ...`` (uncompressed, C order, little-endian) and a
``manifest`` entry: the UTF-8 JSON ``{"names": [...], "dtypes": [...]}``. The manifest
carries the dtype tags because ``.npy`` has no name for bfloat16; such tensors are
stored as same-width unsigned integers and viewed back. Arrays are loaded with
``allow_pickle=False`` and only stored (uncompressed) entries are accepted, so a
payload cannot expand beyond its own size.
"""

from __future__ import annotations

import base64
import io
import json
import zipfile
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..dtypes import dtype_from_tag, tag_of, to_wire_array
from ..exceptions import DecodeError
from ..hookspecs import hookimpl
from .base import Tensors, check_version, read_tag, tag

__all__ = ["NpzBase64Codec"]

FORMAT_VERSION = 1
_MANIFEST = "manifest"


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

    def decode(self, payload: Any) -> Tensors:
        """Decode a tagged object (as parsed from JSON) into named arrays."""
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
            _check_stored_only(raw)
            with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
                names, tags = _manifest(npz)
                return [
                    _restore(i, name, t, npz[f"t{i}"])
                    for i, (name, t) in enumerate(zip(names, tags, strict=True))
                ]
        except DecodeError:
            raise
        except (ValueError, TypeError, KeyError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise DecodeError(f"npz-b64 payload is corrupt or truncated: {exc}") from exc


def _check_stored_only(raw: bytes) -> None:
    # Stored entries cannot expand beyond the payload: no zip bomb gets through.
    for info in zipfile.ZipFile(io.BytesIO(raw)).infolist():
        if info.compress_type != zipfile.ZIP_STORED:
            raise DecodeError(
                f"npz-b64 entry {info.filename!r} is compressed; only stored ones are read"
            )


def _manifest(npz: Any) -> tuple[list[Any], list[Any]]:
    manifest = json.loads(npz[_MANIFEST].tobytes())
    names, tags = manifest["names"], manifest["dtypes"]
    if not (isinstance(names, list) and isinstance(tags, list) and len(names) == len(tags)):
        raise DecodeError("npz-b64 manifest must list as many names as dtypes")
    expected = {f"t{i}" for i in range(len(names))} | {_MANIFEST}
    if set(npz.files) != expected:
        raise DecodeError(
            f"npz-b64 archive entries {sorted(npz.files)} do not match its manifest "
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
