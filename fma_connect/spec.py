"""Flattening weight trees into named tensors, and the Spec that restores them.

A *tree* is what users hand to ``send_update``: a numpy array, a number, or dicts,
lists and tuples (named tuples included) nesting them. :func:`flatten` turns it into
ordered ``(name, array)`` pairs for a codec, plus a :class:`Spec` that remembers what
the wire may lose - structure, names, dtypes, shapes and the kind of every leaf - so
:meth:`Spec.restore` can give back the same kind of object.

Leaves are numpy arrays and scalars, Python numbers, and *numeric lists*: below the
root, a rectangular list of numbers (``[[0.1, 0.2], [0.3, 0.4]]``) is one tensor, so
the classic ``[layer.tolist() for layer in weights]`` is a list of layers, exactly as
the original client sent it. The root itself is always the list of layers.
Names join dict keys and list positions with dots: ``{"fc": {"weight": w}}`` gives
``"fc.weight"``, ``[a, b]`` gives ``"0"`` and ``"1"``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .codecs.base import Tensors
from .exceptions import EncodeError, FrameworkError

__all__ = ["LeafSpec", "Spec", "flatten", "untyped"]

_NUMBER = (bool, int, float, np.bool_, np.number)


@dataclass(frozen=True)
class LeafSpec:
    """What one tensor looked like when it was sent.

    Attributes:
        name: Its dotted path in the tree.
        dtype: Its dtype (native byte order).
        shape: Its shape.
        kind: How to hand it back: ``ndarray``, ``scalar`` (numpy scalar), ``int``,
            ``float``, ``bool`` (Python numbers) or ``list`` (a numeric list).
    """

    name: str
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    kind: str


@dataclass(frozen=True)
class Spec:
    """The structure of a sent tree; restores received tensors into the same shape of object."""

    leaves: tuple[LeafSpec, ...]
    treedef: Any

    @property
    def names(self) -> list[str]:
        """The tensor names, in wire order."""
        return [leaf.name for leaf in self.leaves]

    def restore(self, tensors: Tensors) -> Any:
        """Rebuild the tree from received tensors, with the sent dtypes and shapes.

        Tensors named by position (``"0"``, ``"1"``..., as plain JSON delivers them) are
        matched by position; named ones must carry the sent names in the sent order.

        Raises:
            FrameworkError: count, names or sizes differ; the message names the first difference.
        """
        if len(tensors) != len(self.leaves):
            raise FrameworkError(
                f"expected {len(self.leaves)} tensors ({_preview(self.names)}), "
                f"received {len(tensors)} ({_preview([n for n, _ in tensors])})"
            )
        positional = _is_positional(tensors)
        arrays = []
        for leaf, (name, array) in zip(self.leaves, tensors, strict=True):
            if not positional and name != leaf.name:
                raise FrameworkError(
                    f"tensor names differ: expected {leaf.name!r}, received {name!r}"
                )
            if array.size != math.prod(leaf.shape):
                raise FrameworkError(
                    f"tensor {leaf.name!r}: expected shape {leaf.shape}, "
                    f"received {array.shape} ({array.size} values)"
                )
            arrays.append(_as_leaf(leaf, _cast(array.reshape(leaf.shape), leaf.dtype)))
        return _build(self.treedef, arrays)


def flatten(tree: Any) -> tuple[Tensors, Spec]:
    """Split ``tree`` into named arrays (in order) and the Spec that restores it.

    Raises:
        EncodeError: a leaf is not a number or array; the message names its path.
    """
    tensors: Tensors = []
    leaves: list[LeafSpec] = []

    def visit(node: Any, path: tuple[str, ...], root: bool) -> Any:
        if isinstance(node, Mapping):
            keys = list(node)
            children = [visit(node[k], (*path, str(k)), False) for k in keys]
            return ("dict", type(node), keys, children)
        name = ".".join(path) or "0"
        if isinstance(node, list | tuple):
            numeric = None if root else _numeric_list(node)
            if numeric is None:
                children = [visit(v, (*path, str(i)), False) for i, v in enumerate(node)]
                if isinstance(node, tuple) and hasattr(node, "_fields"):
                    return ("namedtuple", type(node), children)
                return ("tuple" if isinstance(node, tuple) else "list", children)
            array, kind = numeric, "list"
        else:
            array, kind = _leaf_array(node, name)
        leaves.append(LeafSpec(name, array.dtype.newbyteorder("="), array.shape, kind))
        tensors.append((name, array))
        return ("leaf", len(leaves) - 1)

    treedef = visit(tree, (), True)
    if treedef[0] == "leaf":  # a bare array or number is sent as a list of one layer
        treedef = ("bare", treedef)
    return tensors, Spec(tuple(leaves), treedef)


def untyped(tensors: Tensors) -> list[np.ndarray] | dict[str, np.ndarray]:
    """Hand back tensors received without a Spec: a list if named by position, else a dict."""
    if _is_positional(tensors):
        return [array for _, array in tensors]
    return dict(tensors)


def _numeric_list(node: list[Any] | tuple[Any, ...]) -> np.ndarray | None:
    """Return a non-empty rectangular list of numbers as an array; None for anything else."""
    if not node or not isinstance(node, list):
        return None
    if not all(isinstance(v, (*_NUMBER, list)) for v in node):
        return None
    try:
        array = np.asarray(node)
    except (ValueError, TypeError, OverflowError):  # ragged or mixed
        return None
    return array if array.dtype.kind in "biuf" else None


def _leaf_array(node: Any, name: str) -> tuple[np.ndarray, str]:
    if isinstance(node, np.ndarray):
        return node, "ndarray"
    if isinstance(node, np.generic):
        return np.asarray(node), "scalar"
    if isinstance(node, bool):
        return np.asarray(node), "bool"
    if isinstance(node, int):
        try:
            return np.asarray(node, dtype=np.int64), "int"
        except OverflowError:
            raise EncodeError(f"integer at {name!r} does not fit in int64: {node}") from None
    if isinstance(node, float):
        return np.asarray(node, dtype=np.float64), "float"
    raise EncodeError(
        f"cannot send the {type(node).__module__}.{type(node).__qualname__} at {name!r}: "
        "expected numpy arrays, numbers, or dicts/lists/tuples of them"
    )


def _cast(array: np.ndarray, dtype: np.dtype[Any]) -> np.ndarray:
    if array.dtype == dtype:
        return array
    if dtype.kind in "iu" and array.dtype.kind == "f":
        array = np.rint(array)  # an average of integer weights rounds, not truncates
    return array.astype(dtype)


def _as_leaf(leaf: LeafSpec, array: np.ndarray) -> Any:
    if leaf.kind == "ndarray":
        return array
    if leaf.kind == "scalar":
        return array[()]
    if leaf.kind == "list":
        return array.tolist()
    return {"int": int, "float": float, "bool": bool}[leaf.kind](array.item())


def _build(node: Any, arrays: list[Any]) -> Any:
    kind = node[0]
    if kind == "leaf":
        return arrays[node[1]]
    if kind == "bare":
        return _build(node[1], arrays)
    if kind == "dict":
        _, cls, keys, children = node
        values = [_build(c, arrays) for c in children]
        return (
            cls(zip(keys, values, strict=True))
            if cls is not dict
            else dict(zip(keys, values, strict=True))
        )
    if kind == "namedtuple":
        return node[1](*(_build(c, arrays) for c in node[2]))
    values = [_build(c, arrays) for c in node[1]]
    return tuple(values) if kind == "tuple" else values


def _is_positional(tensors: Tensors) -> bool:
    return all(name == str(i) for i, (name, _) in enumerate(tensors))


def _preview(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f", ... {len(names) - limit} more" if len(names) > limit else "")
