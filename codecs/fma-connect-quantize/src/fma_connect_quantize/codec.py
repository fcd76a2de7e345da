"""The quantize codecs: smaller, lossy bodies for float tensors.

=====================  ===================  ==========================================
codec                  floats become        error per element (see :mod:`.schemes`)
=====================  ===================  ==========================================
``quantize-f16``       float16              ``<= 2**-11 * |x|`` (``2**-25`` near 0)
``quantize-int8``      uint8, affine        ``<= scale / 2``, ``scale = (max-min)/255``
``quantize-int8-sym``  int8, symmetric      ``<= scale / 2``, ``scale = max|x|/127``
=====================  ===================  ==========================================

(int8 bounds: plus the rounding of the restored value into the tensor's dtype.) Names,
dtypes and shapes come back as sent; ints, bool, complex and what a scheme cannot
carry come back bit for bit.

Body (format version 1): an fma_connect ``msgpack`` body (header + raw tensors, crc32
per tensor; see :mod:`fma_connect.codecs.msgpack_numpy`) whose header is tagged with
this codec's name. Its first tensor, ``fma_connect.quantize``, is the manifest: UTF-8
JSON in a uint8 array::

    {"codec": "quantize-int8", "format_version": 1,
     "tensors": [{"dtype": "float32", "scheme": "affine-uint8",
                  "offset": -0.5, "scale": 0.0039}, ...]}

one entry per sent tensor; then each stored tensor follows under its own name, with
its shape, in the scheme's stored dtype.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from fma_connect import DecodeError, Tensors, hookimpl
from fma_connect.codecs import MsgpackCodec
from fma_connect.dtypes import dtype_from_tag, tag_of, to_wire_array

from .schemes import SCHEMES, UNIT_ROUNDOFF, error_bound, quantize, restore

__all__ = ["CODECS", "FORMAT_VERSION", "QuantizeCodec"]

FORMAT_VERSION = 1
#: Codec name -> the scheme it applies to float tensors.
CODECS = {
    "quantize-f16": "float16",
    "quantize-int8": "affine-uint8",
    "quantize-int8-sym": "symmetric-int8",
}
_MANIFEST = "fma_connect.quantize"
_PARAMS = {
    "exact": (),
    "float16": (),
    "affine-uint8": ("offset", "scale"),
    "symmetric-int8": ("scale",),
}
_FLOAT16_RELATIVE, _FLOAT16_ABSOLUTE = 2.0**-11, 2.0**-25


class _Container(MsgpackCodec):
    """The msgpack layout, with the quantize codec's name in its header."""

    def __init__(self, name: str) -> None:
        self.name = name


class QuantizeCodec:
    """A lossy codec that quantizes float tensors per tensor.

    Args:
        name: ``quantize-f16``, ``quantize-int8`` or ``quantize-int8-sym``.

    Raises:
        ValueError: ``name`` is not one of those.
    """

    lossless = False
    json_native = False

    def __init__(self, name: str) -> None:
        if name not in CODECS:
            raise ValueError(f"no quantize codec named {name!r}; choose one of {list(CODECS)}")
        self.name = name
        self.media_type = f"application/vnd.fma-connect.{name}"
        self.scheme = CODECS[name]
        self._container = _Container(name)

    def __repr__(self) -> str:
        return f"QuantizeCodec({self.name!r})"

    def encode(self, tensors: Sequence[tuple[str, np.ndarray]]) -> list[Any]:
        """Quantize each float tensor and write the msgpack body with the manifest first."""
        entries: list[dict[str, Any]] = []
        stored: list[tuple[str, np.ndarray]] = []
        for name, array in tensors:
            array = to_wire_array(array, name)
            dtype_tag = tag_of(array.dtype, name)
            scheme, codes, params = quantize(array, dtype_tag, self.scheme)
            entries.append({"dtype": dtype_tag, "scheme": scheme, **params})
            stored.append((name, codes))
        manifest = {"codec": self.name, "format_version": FORMAT_VERSION, "tensors": entries}
        text = np.frombuffer(json.dumps(manifest).encode(), dtype=np.uint8)
        chunks: list[Any] = self._container.encode([(_MANIFEST, text), *stored])
        return chunks

    def decode(self, payload: Any) -> Tensors:
        """Decode a body and restore each tensor in its sent dtype."""
        body = self._container.decode(payload)
        entries = _manifest(body, self.name)
        return [
            (name, _restore(i, name, entry, codes))
            for i, (entry, (name, codes)) in enumerate(zip(entries, body[1:], strict=True))
        ]

    def tolerance(self, sent: np.ndarray, received: np.ndarray) -> bool:
        """Whether ``received`` is within this codec's documented error of ``sent``.

        :func:`fma_connect.testing.check_codec` uses it when given no tolerance.
        """
        if received.dtype != sent.dtype.newbyteorder("=") or received.shape != sent.shape:
            return False
        dtype_tag = tag_of(sent.dtype)
        quantized = ("float32", "float64") if self.scheme == "float16" else UNIT_ROUNDOFF
        if sent.size == 0 or dtype_tag not in quantized:
            return _same(sent, received)
        x = sent.astype(np.float64)
        y = received.astype(np.float64)
        with np.errstate(invalid="ignore", over="ignore"):
            error = np.abs(x - y)
            if self.scheme == "float16":
                allowed = np.maximum(_FLOAT16_RELATIVE * np.abs(x), _FLOAT16_ABSOLUTE)
                return bool(np.all((x == y) | (np.isnan(x) & np.isnan(y)) | (error <= allowed)))
            if not np.all(np.isfinite(x)):
                return _same(sent, received)
            lo, hi = float(x.min()), float(x.max())
            peak = max(abs(lo), abs(hi))
            scale = peak / 127 if self.scheme == "symmetric-int8" else (hi - lo) / 255
            bound = error_bound(self.scheme, dtype_tag, {"scale": scale}, peak)
            return bool(np.all(error <= bound * (1 + 1e-9)))


def _same(sent: np.ndarray, received: np.ndarray) -> bool:
    return bool(np.array_equal(sent, received, equal_nan=sent.dtype.kind in "fc"))


def _manifest(body: Tensors, codec: str) -> list[dict[str, Any]]:
    if not body or body[0][0] != _MANIFEST or body[0][1].dtype != np.uint8:
        raise DecodeError(f"{codec} payload must start with its {_MANIFEST!r} manifest tensor")
    try:
        manifest = json.loads(body[0][1].tobytes())
    except (ValueError, RecursionError) as exc:
        raise DecodeError(f"{codec} manifest is not JSON: {exc}") from exc
    if not isinstance(manifest, dict) or set(manifest) != {"codec", "format_version", "tensors"}:
        raise DecodeError(f"{codec} manifest must hold codec, format_version and tensors")
    if manifest["codec"] != codec:
        raise DecodeError(f"payload manifest is tagged {manifest['codec']!r}, not {codec!r}")
    version = manifest["format_version"]
    if type(version) is not int or version != FORMAT_VERSION:
        raise DecodeError(
            f"{codec} payload has format version {version!r}, but this fma-connect-quantize "
            f"reads version {FORMAT_VERSION}; upgrade the plugin on this side"
        )
    entries = manifest["tensors"]
    if not isinstance(entries, list) or len(entries) != len(body) - 1:
        raise DecodeError(
            f"{codec} manifest must list one entry per stored tensor ({len(body) - 1})"
        )
    return entries


def _restore(index: int, name: str, entry: Any, codes: np.ndarray) -> np.ndarray:
    where = f"tensor {index} ({name!r})"
    scheme = entry.get("scheme") if isinstance(entry, dict) else None
    if scheme not in SCHEMES or set(entry) != {"dtype", "scheme", *_PARAMS[scheme]}:
        raise DecodeError(
            f"quantize {where}: expected an entry with dtype, scheme (one of "
            f"{list(SCHEMES)}) and that scheme's parameters"
        )
    dtype = dtype_from_tag(entry["dtype"])
    stored = SCHEMES[scheme]
    if scheme == "float16":
        allowed = entry["dtype"] in ("float32", "float64")
    else:
        allowed = stored is None or entry["dtype"] in UNIT_ROUNDOFF
    expected = dtype if stored is None else np.dtype(stored)
    if not allowed or codes.dtype != expected:
        raise DecodeError(
            f"quantize {where}: scheme {scheme} of {entry['dtype']} cannot be stored as "
            f"{codes.dtype}"
        )
    params = {key: entry[key] for key in _PARAMS[scheme]}
    for key, value in params.items():
        if type(value) not in (int, float) or not math.isfinite(value):
            raise DecodeError(f"quantize {where}: {key} must be a finite number, got {value!r}")
    if params.get("scale", 0) < 0:
        raise DecodeError(f"quantize {where}: scale must not be negative")
    restored: np.ndarray = restore(scheme, codes, dtype, {k: float(v) for k, v in params.items()})
    return restored


@hookimpl
def fma_connect_register_codecs(registry: Any) -> None:
    """Register ``quantize-f16``, ``quantize-int8`` and ``quantize-int8-sym``."""
    for name in CODECS:
        registry.add(QuantizeCodec(name))
