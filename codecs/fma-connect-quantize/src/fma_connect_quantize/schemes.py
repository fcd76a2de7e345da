"""How one tensor is quantized and restored, and how far the restored values may stray.

Schemes (the ``scheme`` of a tensor in the manifest):

``exact``
    The tensor as it is: ints, bool, complex, the float8 types, empty tensors, and
    floats a lossy scheme cannot carry (see below). Comes back bit for bit.
``float16``
    float32/float64 rounded to the nearest float16. For a value in float16's normal
    range the error is at most ``2**-11 * |x|`` (half a unit in the last place);
    below ``2**-14`` (subnormals) at most ``2**-25``. NaN, infinities and -0.0 stay
    what they are (NaN payload bits are not kept). A tensor holding a finite value
    that float16 would turn into an infinity (``|x| >= 65520``) is sent ``exact``.
``affine-uint8``
    float16/bfloat16/float32/float64, per tensor: ``lo, hi = min(x), max(x)``,
    ``scale = (hi - lo) / 255``, ``q = round((x - lo) / scale)`` in 0..255 (one byte
    each), restored as ``lo + q * scale``. Error: ``|x - x̂| <= scale / 2``, plus the
    rounding of ``x̂`` into the tensor's own dtype (:func:`error_bound`). ``lo`` comes
    back exactly; zero does not (it may move by up to ``scale / 2``).
``symmetric-int8``
    The same dtypes: ``scale = max(|x|) / 127``, ``q = round(x / scale)`` in
    -127..127, restored as ``q * scale``. Error: ``|x - x̂| <= scale / 2`` plus the same
    rounding. Zero comes back exactly (it suits sparse deltas); the step is up to twice
    affine's when the values are not centred on zero.

The int8 schemes carry finite values only: a tensor holding NaN or an infinity, or
whose step or largest restored value would overflow float64, or whose step falls below
float64's smallest normal number, is sent ``exact``. Arithmetic runs in float64, a
million elements at a time.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["SCHEMES", "UNIT_ROUNDOFF", "error_bound", "quantize", "restore"]

#: Per-scheme stored dtype (``exact`` stores the tensor's own).
SCHEMES = {"exact": None, "float16": "float16", "affine-uint8": "uint8", "symmetric-int8": "int8"}
#: Half the gap between 1 and the next value, per dtype the int8 schemes quantize.
UNIT_ROUNDOFF = {"float16": 2.0**-11, "bfloat16": 2.0**-8, "float32": 2.0**-24, "float64": 2.0**-53}
_BLOCK = 1 << 20
_TINY = float(np.finfo(np.float64).tiny)

#: What :func:`quantize` returns: the scheme, the stored array and the scheme's parameters.
Quantized = tuple[str, np.ndarray, dict[str, float]]


def quantize(array: np.ndarray, dtype_tag: str, target: str) -> Quantized:
    """Quantize a C-contiguous little-endian ``array`` of dtype ``dtype_tag``.

    Args:
        array: The tensor.
        dtype_tag: Its fma_connect dtype tag.
        target: ``float16``, ``affine-uint8`` or ``symmetric-int8``; the tensor is
            sent ``exact`` when that scheme does not apply to it (see the module notes).
    """
    exact: Quantized = ("exact", array, {})
    if array.size == 0:
        return exact
    if target == "float16":
        if dtype_tag not in ("float32", "float64"):
            return exact
        with np.errstate(over="ignore"):
            half = array.astype(np.float16)
        if np.any(np.isinf(half) & ~np.isinf(array)):
            return exact
        return "float16", half, {}
    if dtype_tag not in UNIT_ROUNDOFF:
        return exact
    # 16-bit floats widen exactly to float32, where numpy reduces them much faster.
    wide = array.astype(np.float32) if array.itemsize == 2 else array
    if not np.all(np.isfinite(wide)):
        return exact
    lo, hi = float(wide.min()), float(wide.max())
    if target == "symmetric-int8":
        peak = max(abs(lo), abs(hi))
        scale = peak / 127
        if (peak > 0 and scale < _TINY) or not math.isfinite(127 * scale):
            return exact
        codes = _blockwise(wide, np.int8, lambda x: np.clip(np.rint(x / scale), -127, 127), scale)
        return "symmetric-int8", codes, {"scale": scale}
    scale = (hi - lo) / 255
    if (
        not math.isfinite(scale)
        or (hi > lo and scale < _TINY)
        or not math.isfinite(lo + 255 * scale)
    ):
        return exact
    codes = _blockwise(wide, np.uint8, lambda x: np.clip(np.rint((x - lo) / scale), 0, 255), scale)
    return "affine-uint8", codes, {"offset": lo, "scale": scale}


def restore(scheme: str, stored: np.ndarray, dtype: np.dtype[Any], params: dict[str, float]) -> Any:
    """Return the tensor ``stored`` under ``scheme`` stands for, in ``dtype``."""
    if scheme == "exact":
        return stored
    if scheme == "float16":
        return stored.astype(dtype)
    scale, offset = params["scale"], params.get("offset", 0.0)
    out = np.empty(stored.shape, dtype=dtype)
    flat_in, flat_out = stored.reshape(-1), out.reshape(-1)
    for start in range(0, flat_in.size, _BLOCK):
        block = flat_in[start : start + _BLOCK].astype(np.float64)
        flat_out[start : start + _BLOCK] = (offset + block * scale).astype(dtype)
    return out


def error_bound(scheme: str, dtype_tag: str, params: dict[str, float], peak: float) -> float:
    """Largest ``|x - x̂|`` for one element of a tensor quantized with ``scheme``.

    Args:
        scheme: An int8 scheme (``exact`` gives 0; float16's bound is relative, see the
            module notes).
        dtype_tag: The tensor's dtype tag.
        params: The scheme's parameters.
        peak: ``max(|x|)`` over the tensor.
    """
    if scheme == "exact":
        return 0.0
    scale = params["scale"]
    # Half a step, then the rounding of x̂ (|x̂| <= peak + scale) into the tensor's dtype.
    return scale / 2 + 2 * UNIT_ROUNDOFF[dtype_tag] * (peak + scale)


def _blockwise(
    array: np.ndarray,
    dtype: type[np.integer[Any]],
    codes: Callable[[np.ndarray], np.ndarray],
    scale: float,
) -> np.ndarray:
    out = np.zeros(array.shape, dtype=dtype)
    if scale == 0:  # a constant tensor: every code is 0 and restores it exactly
        return out
    flat_in, flat_out = array.reshape(-1), out.reshape(-1)
    for start in range(0, flat_in.size, _BLOCK):
        flat_out[start : start + _BLOCK] = codes(flat_in[start : start + _BLOCK].astype(np.float64))
    return out
