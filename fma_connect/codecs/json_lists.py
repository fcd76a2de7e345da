"""The ``json`` codec: plain nested lists, one per tensor, in layer order.

This is the form the stock FMA service aggregates (``avg_values_if_data`` and
``average_layers`` average a list of layers element-wise), so it is the default.
Plain JSON cannot carry names, dtypes or the shape of an empty tensor: the client
keeps those in its :class:`~fma_connect.spec.Spec` and restores them on the way back.
Finite real values come back exactly (float32 and float16 are written in their
shortest round-tripping form); NaN and infinities are refused, because JSON has no
spelling for them and orjson would silently write ``null``; complex tensors are refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..dtypes import tag_of
from ..exceptions import DecodeError, EncodeError
from ..hookspecs import hookimpl
from .base import Tensors

__all__ = ["JsonListsCodec"]


class JsonListsCodec:
    """Plain JSON lists; wire-compatible with the stock FMA Django service."""

    name = "json"
    media_type = "application/json"
    lossless = False
    json_native = True

    def encode(self, tensors: Sequence[tuple[str, np.ndarray]]) -> list[Any]:
        """Return one JSON-ready value per tensor (arrays are written by orjson)."""
        return [_json_ready(name, array) for name, array in tensors]

    def decode(self, payload: Any) -> Tensors:
        """Turn a list of layers (nested lists of numbers) into arrays named by position."""
        if not isinstance(payload, list):
            raise DecodeError(
                f"json payload must be a list of layers, got {type(payload).__name__}"
            )
        return [(str(i), _layer_array(i, layer)) for i, layer in enumerate(payload)]


def _json_ready(name: str, array: np.ndarray) -> Any:
    tag_of(array.dtype, name)
    if array.dtype.kind == "c":
        raise EncodeError(
            f"tensor {name!r} is complex ({array.dtype}); plain JSON lists cannot carry "
            "complex numbers: use a binary codec such as 'msgpack'"
        )
    if array.dtype.kind == "V" or array.dtype.name == "float16":
        # ml_dtypes floats (bfloat16...) are opaque to orjson; float32 holds them exactly.
        # float16 too: orjson writes it via float32 anyway, this only makes it explicit.
        array = array.astype(np.float32)
    if array.dtype.kind == "f":
        finite = np.isfinite(array)
        if not finite.all():
            bad = int(finite.size - np.count_nonzero(finite))
            raise EncodeError(
                f"tensor {name!r} holds {bad} NaN or infinite value(s); JSON cannot represent "
                "them: clean the weights, or use a binary codec such as 'msgpack'"
            )
    if array.ndim == 0:
        return array.item()
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    return array if array.flags.c_contiguous else array.copy(order="C")


def _layer_array(index: int, layer: Any) -> np.ndarray:
    if isinstance(layer, bool | int | float):
        layer = [layer]
        scalar = True
    elif isinstance(layer, list):
        scalar = False
    else:
        raise DecodeError(
            f"json layer {index} must be a number or a nested list of numbers, "
            f"got {type(layer).__name__}"
        )
    try:
        array = np.asarray(layer)
    except (ValueError, OverflowError) as exc:
        raise DecodeError(
            f"json layer {index} is not a rectangular list of numbers: {exc}"
        ) from exc
    if array.dtype.kind == "f" and array.size and np.abs(array).max() >= 2.0**63:
        array = _exact_uint64(array, layer)
    if array.dtype.kind not in "biuf":
        raise DecodeError(
            f"json layer {index} must hold numbers only, got elements of type {array.dtype}"
        )
    return array.reshape(()) if scalar else array


def _exact_uint64(array: np.ndarray, layer: list[Any]) -> np.ndarray:
    # numpy reads integers above int64's range as float64; uint64 weights need them exact.
    values = np.array(layer, dtype=object)
    if all(type(v) is int and 0 <= v < 2**64 for v in values.flat):
        return values.astype(np.uint64)
    return array


@hookimpl
def fma_connect_register_codecs(registry: Any) -> None:
    """Register the ``json`` codec."""
    registry.add(JsonListsCodec())
