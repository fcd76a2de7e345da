"""The exact arithmetic of a mean: exact weights, scaled sums, their quotient cast.

Weights are kept exact (:data:`Weight`); integer and bool tensors are summed exactly,
float ones scaled by powers of two so that they cannot overflow (see
:meth:`~.mean.Accumulator._rescale`). A slice of sums divided by the total weight is
cast to the mean's dtype as :func:`cast_values` casts: integers rounded to nearest and
clipped to their range, bools from 0.5 up. :class:`~.mean.Accumulator` keeps the sums.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import numpy as np

__all__ = ["Weight", "cast_values"]

#: An update's weight, kept exact: integer tensors are averaged without rounding error.
Weight = int | Fraction


def _exact(weight: float) -> Weight:
    """A weight as an exact number: an int when it is whole, else a fraction."""
    if isinstance(weight, int):
        return weight
    return int(weight) if float(weight).is_integer() else Fraction(weight)


def _start_wide(dtype: np.dtype[Any]) -> np.dtype[Any]:
    """The sum dtype of a tensor's first update (see :meth:`~.mean.Accumulator._widen`)."""
    if dtype.kind == "c":
        return np.dtype(np.complex128)
    return np.dtype(np.int64 if dtype.kind in "biu" else np.float64)


def _scaled(part: np.ndarray, weight: Weight, wide: np.dtype[Any], e: int = 0) -> np.ndarray:
    """``part * weight`` in the sum dtype ``wide`` (divided by 2**e if it is a float sum)."""
    term = part.astype(wide)
    if wide.kind in "iO":
        if weight != 1:
            term *= weight
        return term
    if e:  # before the weight: the product must not overflow either
        _pow2(term, -e)
    if weight != 1:
        term *= float(weight)
    return term


def _add_scaled(total: np.ndarray, part: np.ndarray, weight: Weight, e: int = 0) -> None:
    total += _scaled(part, weight, total.dtype, e)


def _pow2(array: np.ndarray, n: int) -> None:
    """Multiply a float or complex array by 2**n in place (exact, barring underflow)."""
    if array.dtype.kind == "c":
        for part in (array.real, array.imag):
            np.ldexp(part, n, out=part)
    else:
        np.ldexp(array, n, out=array)


def _mean(total: np.ndarray, weight: Weight, dtype: np.dtype[Any], e: int = 0) -> np.ndarray | None:
    """Divide a slice of sums by the total weight and cast it to ``dtype``.

    Args:
        total: The slice of sums (float sums divided by 2**e).
        weight: The total weight.
        dtype: The mean's dtype.
        e: See :meth:`~.mean.Accumulator._rescale`.

    Returns:
        The mean, or None when a value is beyond the range of the float ``dtype``.
    """
    if total.dtype.kind not in "iO":
        total /= float(weight)
        parts = (total.real, total.imag) if total.dtype.kind == "c" else (total,)
        if e:
            _pow2(total, e)
            # A mean lies between the values averaged, all finite: only rounding at the
            # very top of float64's range can reach infinity, so it is clamped back.
            for part in parts:
                np.clip(part, -_FLOAT64_MAX, _FLOAT64_MAX, out=part)
        if dtype.kind in "fcV" and dtype.itemsize < total.dtype.itemsize and total.size:
            limit = _float_max(dtype)
            if any(max(-float(p.min()), float(p.max())) > limit for p in parts):
                return None
        return _cast(total, dtype)
    # Exact integer sums (int64, or Python ints / fractions): round the exact quotient.
    if dtype.kind in "iu":
        quotient = total // weight  # floor division: the remainder is in [0, weight)
        twice = 2 * (total - quotient * weight)
        quotient = quotient + ((twice > weight) | ((twice == weight) & (quotient % 2 == 1)))
        info = np.iinfo(dtype)
        low, high = info.min, info.max
        if quotient.dtype.kind == "i":  # keep the bounds within int64 for numpy
            low, high = max(low, -(2**63)), min(high, 2**63 - 1)
        clipped: np.ndarray = np.minimum(np.maximum(quotient, low), high)
        return clipped.astype(dtype)
    if dtype.kind == "b":
        flags: np.ndarray = 2 * total >= weight
        return flags.astype(bool)
    return _cast((total / weight).astype(np.float64), dtype)


_FLOAT64_MAX = float(np.finfo(np.float64).max)


def _float_max(dtype: np.dtype[Any]) -> float:
    """The largest finite value of a float (or complex, or ml_dtypes float) dtype."""
    if dtype.kind == "V":
        import ml_dtypes  # the only source of such dtypes

        return float(ml_dtypes.finfo(dtype).max)  # type: ignore[no-untyped-call]
    return float(np.finfo(dtype).max)


def _widest_float(dtype: np.dtype[Any]) -> np.dtype[Any]:
    """float64, or complex128 for a complex dtype: holds any finite mean."""
    return np.dtype(np.complex128 if dtype.kind == "c" else np.float64)


def _cast(mean: np.ndarray, dtype: np.dtype[Any]) -> np.ndarray:
    if dtype.kind == "b":
        flags: np.ndarray = mean.real >= 0.5
        return flags
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        # float(info.max) rounds up past the largest int64/uint64: clip below it instead.
        high = np.nextafter(float(info.max), 0.0) if float(info.max) > info.max else info.max
        rounded: np.ndarray = np.clip(np.rint(mean.real), float(info.min), high)
        return rounded.astype(dtype)
    if dtype.kind in "fV" and mean.dtype.kind == "c":
        mean = mean.real
    return mean.astype(dtype)


def cast_values(values: np.ndarray, dtype: np.dtype[Any]) -> np.ndarray:
    """Float64 (or complex128) results in a result ``dtype`` as the mean casts them:
    integers rounded to nearest and clipped to their range, bools from 0.5 up."""
    return _cast(values, dtype)
