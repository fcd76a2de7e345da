"""An example fma_connect codec: a JSON header, then each tensor's raw bytes.

Body: header length (4 bytes, little-endian), the UTF-8 JSON header
``{"format_version": 1, "tensors": [{"name", "dtype", "shape"}, ...]}``, then the
tensors' bytes back to back (C order, little-endian).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

import fma_connect
from fma_connect import DecodeError
from fma_connect.dtypes import dtype_from_tag, tag_of, to_wire_array

FORMAT_VERSION = 1


class ExampleRawCodec:
    """A JSON header and the raw tensor bytes; lossless."""

    name = "example-raw"  # the wire tag: lowercase kebab-case
    media_type = "application/vnd.example.raw"
    lossless = True  # every dtype comes back bit for bit, with its name and shape
    json_native = False  # a body of its own, not a value inside a JSON body

    def encode(self, tensors: Sequence[tuple[str, np.ndarray]]) -> list[Any]:
        """Return the body as chunks: the header, then each tensor's own buffer."""
        # to_wire_array: C order, little-endian, and only dtypes that may cross the wire.
        arrays = [(name, to_wire_array(array, name)) for name, array in tensors]
        entries = [
            {"name": name, "dtype": tag_of(array.dtype, name), "shape": list(array.shape)}
            for name, array in arrays
        ]
        header = json.dumps({"format_version": FORMAT_VERSION, "tensors": entries}).encode()
        raw = [array.reshape(-1).view(np.uint8) for _, array in arrays]
        return [len(header).to_bytes(4, "little"), header, *raw]

    def decode(self, payload: Any) -> list[tuple[str, np.ndarray]]:
        """Decode a body; anything wrong with it raises DecodeError, never another error."""
        try:
            view = memoryview(payload).cast("B")
            size = int.from_bytes(view[:4], "little")
            header = json.loads(view[4 : 4 + size].tobytes())
            version = header["format_version"]
            entries = header["tensors"]
        except (TypeError, ValueError, KeyError, RecursionError) as exc:
            raise DecodeError(f"not an example-raw body: {exc!r}") from exc
        if version != FORMAT_VERSION:
            raise DecodeError(f"example-raw format version {version!r} is not {FORMAT_VERSION}")
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise DecodeError("example-raw header 'tensors' must be a list of objects")
        out, offset = [], 4 + size
        for entry in entries:
            name, shape = entry.get("name"), entry.get("shape")
            ints = isinstance(shape, list) and all(type(n) is int and n >= 0 for n in shape)
            if not isinstance(name, str) or not ints:
                raise DecodeError(f"example-raw header entry is malformed: {entry!r}")
            dtype = dtype_from_tag(entry.get("dtype"))  # raises DecodeError off the allowlist
            nbytes = math.prod(shape) * dtype.itemsize
            if offset + nbytes > view.nbytes:
                raise DecodeError(f"example-raw body is truncated in tensor {name!r}")
            data = view[offset : offset + nbytes]
            out.append((name, np.frombuffer(data, dtype=dtype).reshape(shape)))
            offset += nbytes
        if offset != view.nbytes:
            raise DecodeError(f"example-raw body has {view.nbytes - offset} bytes too many")
        return out


@fma_connect.hookimpl
def fma_connect_register_codecs(registry: fma_connect.CodecRegistry) -> None:
    """Called by fma_connect when it builds its codec registry."""
    registry.add(ExampleRawCodec())
