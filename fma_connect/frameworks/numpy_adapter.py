"""The built-in ``numpy`` adapter: numpy arrays and scalars, Python numbers, numeric lists.

Below the root of a tree, a rectangular list of numbers (``[[0.1, 0.2], [0.3, 0.4]]``)
is one tensor, so the classic ``[layer.tolist() for layer in weights]`` is a list of
layers, exactly as the original client sent it. Each leaf comes back as what it was:
an ndarray, a numpy scalar, a Python ``int``/``float``/``bool`` or a nested list.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..exceptions import EncodeError
from ..hookspecs import hookimpl
from .base import Branch, Leaf

__all__ = ["NumpyFramework"]

_NUMBER = (bool, int, float, np.bool_, np.number)
_PYTHON = {"int": int, "float": float, "bool": bool, "complex": complex}


class NumpyFramework:
    """numpy arrays and scalars, Python numbers and numeric lists."""

    name = "numpy"

    def claims(self, obj: Any) -> bool:
        """Claim arrays, numbers and rectangular lists of numbers."""
        if isinstance(obj, np.ndarray | np.generic | bool | int | float | complex):
            return True
        return isinstance(obj, list) and _numeric_list(obj) is not None

    def flatten(self, obj: Any, name: str) -> Leaf | Branch:
        """Return the leaf; its kind says which Python or numpy type to give back."""
        if isinstance(obj, np.ma.MaskedArray):
            raise EncodeError(
                f"the masked array at {name!r} cannot be sent with its mask; send "
                "array.filled(value) or array.data"
            )
        if isinstance(obj, np.ndarray):
            # np.matrix and other subclasses travel (and come back) as plain arrays.
            return Leaf(np.asarray(obj), "ndarray")
        if isinstance(obj, np.generic):
            return Leaf(np.asarray(obj), "scalar")
        if isinstance(obj, bool):
            return Leaf(np.asarray(obj), "bool")
        if isinstance(obj, int):
            try:
                return Leaf(np.asarray(obj, dtype=np.int64), "int")
            except OverflowError:
                raise EncodeError(f"integer at {name!r} does not fit in int64: {obj}") from None
        if isinstance(obj, float):
            return Leaf(np.asarray(obj, dtype=np.float64), "float")
        if isinstance(obj, complex):
            return Leaf(np.asarray(obj, dtype=np.complex128), "complex")
        array = _numeric_list(obj) if isinstance(obj, list) else None
        if array is None:
            raise EncodeError(f"the numpy adapter cannot send {type(obj).__name__} at {name!r}")
        return Leaf(array, "list")

    def restore(self, array: np.ndarray, kind: str, meta: Any) -> Any:
        """Give the array back as the kind of object that was sent."""
        if kind == "ndarray":
            return array
        if kind == "scalar":
            return array[()]
        if kind == "list":
            return array.tolist()
        return _PYTHON[kind](array.item())

    def rebuild(self, meta: Any, items: list[tuple[str, Any]], target: Any) -> Any:
        """Unused: this adapter makes no branches (containers are walked by flatten)."""
        return dict(items)


def _numeric_list(node: list[Any]) -> np.ndarray | None:
    """Return a non-empty rectangular list of numbers as an array; None for anything else."""
    if not node or not all(isinstance(v, (*_NUMBER, list)) for v in node):
        return None
    try:
        array = np.asarray(node)
    except (ValueError, TypeError, OverflowError):  # ragged or mixed
        return None
    return array if array.dtype.kind in "biuf" else None


@hookimpl
def fma_connect_register_frameworks(registry: Any) -> None:
    """Register the ``numpy`` adapter."""
    registry.add(NumpyFramework())
