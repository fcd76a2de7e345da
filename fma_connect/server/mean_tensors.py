"""What the mean reads of an update, and how: a slice of a tensor at a time.

An update's tensors are arrays (often views of memory-mapped blob files, which cost no
memory to hold) or :class:`LazyTensor` ones, rebuilt a flat slice of :data:`.mean.SLICE`
elements at a time. Here are those types, how a slice of either is read
(:func:`part`), whether an update views its files (:func:`views_files`), and the scans
of a tensor a slice at a time: whether it is finite (:func:`all_finite`) and its
largest absolute value. :mod:`.mean` averages updates with them and offers them
to the other aggregators (:mod:`.aggregators`) and to the checks of uploads.
"""

from __future__ import annotations

import math
import mmap
from collections.abc import Sequence
from fractions import Fraction
from typing import Any, Protocol

import numpy as np

__all__ = [
    "LazyTensor",
    "Update",
    "all_finite",
    "part",
    "views_files",
]


class LazyTensor(Protocol):
    """A tensor held in a compact form, rebuilt a flat slice at a time when it is read.

    What a codec's server-side decode may give instead of an array (the ``sparse``
    codec's :class:`~fma_connect.codecs.sparse_delta.SparseTensor`), so that a held
    update costs what it holds, not a model.
    """

    @property
    def shape(self) -> tuple[int, ...]:
        """The tensor's shape."""
        ...

    @property
    def dtype(self) -> np.dtype[Any]:
        """The tensor's dtype."""
        ...

    @property
    def size(self) -> int:
        """Its number of elements."""
        ...

    @property
    def held_nbytes(self) -> int:
        """The memory it holds of its own (not views of files, nor a shared base)."""
        ...

    def rebuild(self, start: int, stop: int) -> np.ndarray:
        """Its flat elements ``start`` to ``stop``, in its dtype (a new array)."""
        ...


#: An update as :meth:`~.mean.Accumulator.add` takes it: arrays, or tensors rebuilt on demand.
Update = Sequence[tuple[str, np.ndarray | LazyTensor]]


def _views_files(arrays: Sequence[np.ndarray]) -> bool:
    """Whether every array views a memory-mapped file, which costs no memory to hold.

    Anything else (plain JSON parsed, a delta rebuilt whole) is a copy of an update in
    memory: :meth:`~.mean.Accumulator.add` folds such an update into the sums at once.
    """
    for array in arrays:
        owner: object = array
        while isinstance(owner, np.ndarray):
            owner = owner.base
        if isinstance(owner, memoryview):
            owner = owner.obj
        if not isinstance(owner, mmap.mmap):
            return False
    return True


def _flat(array: np.ndarray) -> np.ndarray:
    # A view for the contiguous arrays codecs produce; a copy only for strided input.
    return array.reshape(-1)


def _part(tensor: np.ndarray | LazyTensor, start: int, stop: int) -> np.ndarray:
    """Flat elements ``start`` to ``stop`` of an array (a view) or a lazy tensor (rebuilt)."""
    if not isinstance(tensor, np.ndarray):
        return tensor.rebuild(start, stop)
    if tensor.flags.c_contiguous:  # the arrays codecs produce
        return tensor.reshape(-1)[start:stop]
    # Strided input: a copy of this slice only, not of the whole array per slice.
    part: np.ndarray = tensor.flat[start:stop]
    return part


def _materialised(tensor: np.ndarray | LazyTensor) -> np.ndarray | LazyTensor:
    """A lazy integer or bool tensor rebuilt whole; anything else as it is."""
    if isinstance(tensor, np.ndarray) or tensor.dtype.kind not in "biu":
        return tensor
    return tensor.rebuild(0, tensor.size).reshape(tensor.shape)


def _slice() -> int:
    """Elements per slice: :data:`.mean.SLICE` as it is when a scan runs, read there as the
    aggregators read it, so that setting it (as tests do) reaches these scans too."""
    from . import mean  # here, not at the top: mean imports this module

    return mean.SLICE


def _max_abs(array: np.ndarray | LazyTensor) -> Fraction | None:
    """The largest absolute value in a tensor, exactly; None if it holds NaN or infinity."""
    if array.size == 0:
        return Fraction(0)
    if isinstance(array, np.ndarray) and array.dtype.kind in "biu":
        return Fraction(_magnitude(array))
    largest = 0.0
    step = _slice()
    for start in range(0, array.size, step):
        part = _part(array, start, start + step)
        if part.dtype.kind == "V":  # ml_dtypes floats: numpy's reductions need a real dtype
            part = part.astype(np.float64)
        pieces = (part.real, part.imag) if part.dtype.kind == "c" else (part,)
        for piece in pieces:
            high, low = float(piece.max()), float(piece.min())
            if not (math.isfinite(high) and math.isfinite(low)):
                return None
            largest = max(largest, abs(high), abs(low))
    return Fraction(largest)


def _magnitude(array: np.ndarray) -> int:
    """The largest absolute value in an integer or bool array, as a Python int."""
    if array.size == 0:
        return 0
    if array.dtype.kind == "b":
        return 1
    return max(abs(int(array.max())), abs(int(array.min())))


def all_finite(array: np.ndarray) -> bool:
    """Whether a tensor holds no NaN or infinity (checked a slice at a time)."""
    if array.dtype.kind in "biu":
        return True
    flat = _flat(array)
    step = _slice()
    for start in range(0, flat.size, step):
        part = flat[start : start + step]
        if part.dtype.kind == "V":  # ml_dtypes floats: numpy's isfinite needs a real dtype
            part = part.astype(np.float64)
        if not np.isfinite(part).all():
            return False
    return True


def part(tensor: np.ndarray | LazyTensor, start: int, stop: int) -> np.ndarray:
    """Flat elements ``start`` to ``stop`` of an array (a view where it can be) or a lazy
    tensor (rebuilt): how aggregators read an update a slice at a time."""
    return _part(tensor, start, stop)


def views_files(arrays: Sequence[np.ndarray]) -> bool:
    """Whether every array views a memory-mapped file (holding it costs no memory)."""
    return _views_files(arrays)
