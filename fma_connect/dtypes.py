"""The dtypes that may cross the wire, and their wire tags.

Codecs name a dtype by a tag (``"float32"``, ``"bfloat16"``...) instead of numpy's
``dtype.str``: bfloat16 and the float8 types of ml_dtypes have no ``dtype.str`` of
their own (numpy reports them as opaque void), and a tag allowlist is what keeps
object, void and structured dtypes - anything that could hide a pickle - out.
All data on the wire is little-endian.
"""

from __future__ import annotations

import numpy as np

from .exceptions import DecodeError, EncodeError

__all__ = ["ML_DTYPES_TAGS", "NUMPY_TAGS", "dtype_from_tag", "tag_of", "to_wire_array"]

#: Tags of the dtypes numpy itself provides.
NUMPY_TAGS = (
    "bool",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float16",
    "float32",
    "float64",
    "complex64",
    "complex128",
)

#: Tags of the dtypes that need the ml_dtypes package.
ML_DTYPES_TAGS = ("bfloat16", "float8_e4m3fn", "float8_e5m2")


def _ml_dtype(tag: str) -> np.dtype[np.generic]:
    try:
        import ml_dtypes
    except ImportError:
        raise DecodeError(
            f"the payload holds {tag} data, which needs the ml_dtypes package: "
            "pip install ml_dtypes (or fma-connect[bfloat16])"
        ) from None
    dtype: np.dtype[np.generic] = np.dtype(getattr(ml_dtypes, tag))
    return dtype


def dtype_from_tag(tag: object) -> np.dtype[np.generic]:
    """Return the little-endian dtype a wire tag names.

    Raises:
        DecodeError: the tag is not on the allowlist.
    """
    if isinstance(tag, str):
        if tag in NUMPY_TAGS:
            return np.dtype(tag).newbyteorder("<")
        if tag in ML_DTYPES_TAGS:
            return _ml_dtype(tag)
    allowed = ", ".join(NUMPY_TAGS + ML_DTYPES_TAGS)
    raise DecodeError(f"unsupported dtype {tag!r} in payload; expected one of: {allowed}")


def tag_of(dtype: np.dtype[np.generic], where: str = "") -> str:
    """Return the wire tag of ``dtype``.

    Args:
        dtype: The dtype of a tensor about to be encoded.
        where: The tensor's name, for the error message.

    Raises:
        EncodeError: the dtype cannot cross the wire (object, string, void, datetime...).
    """
    if dtype.kind in "biufc" and dtype.name in NUMPY_TAGS:
        return dtype.name
    if dtype.name in ML_DTYPES_TAGS:
        return dtype.name
    place = f" at {where!r}" if where else ""
    raise EncodeError(
        f"tensor{place} has dtype {dtype}; fma_connect sends numeric dtypes only "
        f"({', '.join(NUMPY_TAGS + ML_DTYPES_TAGS)})"
    )


def to_wire_array(array: np.ndarray, where: str = "") -> np.ndarray:
    """Return ``array`` as a C-contiguous little-endian array, copying only when needed.

    Raises:
        EncodeError: the dtype cannot cross the wire.
    """
    tag_of(array.dtype, where)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    # Not np.ascontiguousarray: it turns a 0-d array into a 1-d one.
    return array if array.flags.c_contiguous else array.copy(order="C")
