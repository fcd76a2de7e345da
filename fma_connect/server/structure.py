"""The structure of a model's weights (tensor names and shapes), and how two differ.

A model's structure is established by its initial model, else its latest aggregate
(before either, its first round's majority); every later update must have the same
number of tensors and the same shapes. Names are compared only when both sides carry
them: plain JSON without ``tensor_names`` names tensors by position (``"0"``, ``"1"``...),
and then only positions count, except that unnamed layers are refused against named
tensors of which two share a shape, where position alone could pair the wrong ones.
When both carry names, the tensors are matched by name, in any order.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..codecs.base import Tensors

__all__ = ["Structure", "by_name", "difference", "positional", "structure_of"]

#: ``[(name, shape), ...]`` in the order the tensors came.
Structure = list[tuple[str, tuple[int, ...]]]


def structure_of(tensors: Tensors) -> Structure:
    """Return the names and shapes of ``tensors``."""
    return [(name, tuple(array.shape)) for name, array in tensors]


def positional(names: Sequence[str]) -> bool:
    """Whether ``names`` are positions (``"0"``, ``"1"``...), as plain JSON names tensors."""
    return all(name == str(i) for i, name in enumerate(names))


def by_name(names: Sequence[str], tensors: Tensors) -> Tensors | None:
    """Return ``tensors`` in the order of ``names`` when both carry the same unique names.

    Returns:
        The reordered tensors, or None when either side is positional or the names
        differ (then compare by position, or report the difference).
    """
    got = [name for name, _ in tensors]
    if positional(names) or positional(got) or len(set(got)) != len(got):
        return None
    if sorted(got) != sorted(names):
        return None
    index = dict(tensors)
    return [(name, index[name]) for name in names]


def difference(expected: Structure, got: Structure, source: str) -> str | None:
    """Return the first difference between two structures, or None when they match.

    Args:
        expected: The established structure.
        got: The structure of an update.
        source: What established it, for the message (e.g. ``"the initial model"``).
    """
    if not got:
        return "the update holds no tensors"
    if len(got) != len(expected):
        return f"expected {len(expected)} tensors like {source}, got {len(got)}"
    names = [name for name, _ in got]
    expected_names = [name for name, _ in expected]
    if not (positional(names) or positional(expected_names)):
        seen: set[str] = set()
        for name in names:
            if name in seen:
                return f"tensor {name!r} appears more than once"
            seen.add(name)
        shapes = dict(got)
        for name, shape in expected:
            if name not in shapes:
                extra = next(n for n in names if n not in dict(expected))
                return f"tensor {extra!r} is not in {source}, which has {name!r} instead"
            if shapes[name] != shape:
                return _shape_message(repr(name), shapes[name], shape, source)
        return None
    for i, ((_, shape), (_, want)) in enumerate(zip(got, expected, strict=True)):
        if shape != want:
            return _shape_message(str(i), shape, want, source)
    if positional(names) and not positional(expected_names):
        # Unnamed layers against named tensors pair by position; where two tensors have
        # one shape, a list in another order would be averaged silently with the wrong one.
        seen_shapes: dict[tuple[int, ...], str] = {}
        for name, shape in expected:
            if shape in seen_shapes:
                return (
                    f"the layers carry no names, and {source} has two tensors of shape "
                    f"{list(shape)} ({seen_shapes[shape]!r} and {name!r}) that position alone "
                    "cannot tell apart: send the names in tensor_names, in the order of "
                    "the layers"
                )
            seen_shapes[shape] = name
    return None


def _shape_message(which: str, shape: tuple[int, ...], want: tuple[int, ...], source: str) -> str:
    return f"tensor {which} has shape {list(shape)}; {source} has {list(want)}"
