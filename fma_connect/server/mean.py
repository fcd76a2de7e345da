"""The weighted mean of a round's updates, exact where it can be and never overflowing.

:class:`Accumulator` averages in float64 (complex128 for complex tensors), slice by
slice (:data:`SLICE` elements), so a round needs the result's memory plus a few slices,
not a float64 copy of every update. What it holds of an update until it sums them:

* tensors that are views of memory-mapped blob files cost no memory; past
  :data:`FOLD_AT` updates holding such views they are folded into float64 running sums;
* :class:`LazyTensor` ones (a ``sparse`` update's tensors: its base, a view of a file,
  and the changes sent) cost what they hold of their own (their ``held_nbytes``), and
  are rebuilt a slice at a time as they are summed; when what the held ones hold passes
  the model's size (the bytes of one update's tensors), they are folded;
* an update that is a copy in memory (plain JSON parsed) is folded at once.

So memory grows with the model, never with the number of updates: at most the result,
the held lazy parts (up to the model's size, plus the update just added), float64 running
sums once anything was folded (8 bytes an element), and a few slices. A round of views
and sparse updates within that budget never folds: the result, the sparse parts and a
few slices. Folding earlier or later gives the same bits: the sums are taken in the
order the updates came, and their scaling by powers of two (:meth:`Accumulator._rescale`)
is exact (barring subnormal partial sums, and integer sums turned float by a later float
update of the same tensor, which round once where held ones would round per update). An
update whose structure differs from the first accepted one is refused with a reason and
the others still count.

The mean of each tensor is cast to a dtype that holds every update's values, whatever
their order: numpy's promotion of the senders' dtypes (float16 and float32 make
float32, int8 and float64 make float64), with integers rounded to nearest. Plain JSON
updates carry no dtype: next to a sender's float type they take it; next to integer
types their layer counts as float64 if it holds a float, else as the smallest integer
type that holds its values. A round of plain JSON updates only answers float64, as
the stock service does.

Integer and bool tensors are summed exactly instead (int64 while that cannot overflow,
else Python integers), so int64 and uint64 values survive whole. Named tensors are
matched by name, in any order; plain JSON ones sent without names by position (the
mean keeps the names).

Float sums cannot overflow: they are kept divided by a power of two wherever values
near the float64 limit or large weights would overflow them (see
:meth:`Accumulator._rescale`), and are otherwise bit for bit the plain weighted sums. A
mean beyond the range of its dtype is kept in float64 instead.

The parts live beside it, and this module offers their public names: the round's
structure and result dtypes (:class:`Layout`) in :mod:`.mean_layout`; what an update is
and how it is read a slice at a time (:class:`LazyTensor`, :data:`Update`, :func:`part`,
:func:`views_files`, :func:`all_finite`) in :mod:`.mean_tensors`; the exact weights,
scaled sums and the cast of their quotient (:func:`cast_values`) in :mod:`.mean_sums`.
Here are the :class:`Accumulator` and the sizes :data:`SLICE` and :data:`FOLD_AT`, which
every part reads from here when it runs, so that setting one here reaches them all.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

import numpy as np

from ..codecs.base import Tensors
from .mean_layout import Layout
from .mean_sums import (
    Weight,
    _add_scaled,
    _exact,
    _mean,
    _pow2,
    _scaled,
    _start_wide,
    _widest_float,
    cast_values,
)
from .mean_tensors import (
    LazyTensor,
    Update,
    _magnitude,
    _part,
    _views_files,
    all_finite,
    part,
    views_files,
)

__all__ = [
    "FOLD_AT",
    "SLICE",
    "Accumulator",
    "Layout",
    "LazyTensor",
    "Update",
    "all_finite",
    "cast_values",
    "part",
    "views_files",
]

#: Elements per slice when checking, summing and casting (2 MiB of float64): a few
#: slices are the working memory of a round beyond its result.
SLICE = 1 << 18
#: Updates held as views of their files before they are folded into running sums.
FOLD_AT = 16

#: Integer sums (plus the total weight) stay below this to be summed in int64.
_INT64_SAFE = 2**62


class Accumulator:
    """Weighted mean of updates with the structure of the first one added."""

    def __init__(self) -> None:
        self._layout = Layout()
        self._wide: list[np.dtype[Any]] = []
        self._held: list[tuple[Update, Weight]] = []
        #: What the held updates cost: the bytes of their lazy tensors, and how many of
        #: them hold views of their own files; folded past the model's bytes, or FOLD_AT.
        self._held_bytes = 0
        self._held_files = 0
        self._model_nbytes = 0
        self._sums: list[np.ndarray] | None = None
        self._weight: Weight = 0
        #: Per integer tensor, a bound on the magnitude of its weighted sum.
        self._bounds: list[Weight] = []
        #: Per tensor, a bound on the magnitude of its weighted sum (any dtype), and the
        #: power of two ``e`` its float sums are kept divided by (2**-e), so that they
        #: cannot overflow (see :meth:`_rescale`).
        self._magnitudes: list[Fraction] = []
        self._exps: list[int] = []

    @property
    def count(self) -> int:
        """How many updates were added."""
        return self._layout.count

    @property
    def _shapes(self) -> list[tuple[int, ...]]:
        return self._layout.shapes

    def add(self, tensors: Update, weight: float = 1.0, *, typed: bool = True) -> str | None:
        """Add an update; return why it was refused (and leave the mean unchanged), or None.

        The update's arrays and lazy tensors are kept (not copied) until :meth:`result`
        or a fold (see the module for when that is).

        Args:
            tensors: The update.
            weight: Its weight in the mean.
            typed: Whether its dtypes are the sender's (False for plain JSON, whose
                dtypes are guessed from the numbers); see the module for the result's.
        """
        first = not self._layout.count
        accepted = self._layout.accept(tensors, typed=typed)
        if isinstance(accepted, str):
            return accepted
        tensors, magnitudes = accepted
        if first:
            self._wide = [_start_wide(array.dtype) for _, array in tensors]
            self._bounds = [0] * len(tensors)
            self._magnitudes = [Fraction(0)] * len(tensors)
            self._exps = [0] * len(tensors)
            self._model_nbytes = sum(array.size * array.dtype.itemsize for _, array in tensors)
        scale = _exact(weight)
        self._widen(tensors, scale)
        self._rescale(magnitudes, scale)
        self._held.append((tensors, scale))
        self._weight += scale
        arrays = [array for _, array in tensors if isinstance(array, np.ndarray)]
        self._held_bytes += sum(
            array.held_nbytes for _, array in tensors if not isinstance(array, np.ndarray)
        )
        self._held_files += bool(arrays)
        if (
            not _views_files(arrays)
            or self._held_files >= FOLD_AT
            or self._held_bytes > self._model_nbytes
        ):
            self._fold()
        return None

    def planned(self) -> list[tuple[str, tuple[int, ...], np.dtype[Any]]]:
        """The name, shape and dtype each tensor of :meth:`result` will have.

        A mean beyond the range of its planned dtype comes in float64 instead (see
        :meth:`result`), which only computing it tells.
        """
        return self._layout.planned()

    def result(self, out: Sequence[np.ndarray] | None = None) -> Tensors:
        """Return the weighted mean, each tensor in the dtype the module describes.

        Args:
            out: Arrays to write the means into, one per tensor with the shape and dtype
                :meth:`planned` gives (e.g. views of the file the mean is stored in, so
                that it is not also held in memory). A mean beyond the range of its
                dtype is returned in a new float64 array instead of its ``out`` (whose
                contents are then undefined).
        """
        planned = self.planned()
        if out is not None and (
            [(a.shape, a.dtype) for a in out] != [p[1:] for p in planned]
            or not all(a.flags.c_contiguous and a.flags.writeable for a in out)
        ):
            raise ValueError("out must hold a writable C-contiguous array per planned() tensor")
        result: Tensors = []
        for i, ((name, _, dtype), wide) in enumerate(zip(planned, self._wide, strict=True)):
            mean = self._mean_of(i, wide, dtype, None if out is None else out[i])
            if mean is None:  # beyond the range of dtype: float64 holds any finite mean
                mean = self._mean_of(i, wide, _widest_float(dtype))
                assert mean is not None
            result.append((name, mean))
        return result

    def _mean_of(
        self,
        i: int,
        wide: np.dtype[Any],
        dtype: np.dtype[Any],
        out: np.ndarray | None = None,
    ) -> np.ndarray | None:
        """Tensor ``i``'s mean in ``dtype`` (in ``out`` if given, a C-contiguous array of
        its shape and dtype); None if a value is beyond what ``dtype`` can hold."""
        e = self._exps[i]
        mean = np.empty(self._shapes[i], dtype) if out is None else out
        flat = mean.reshape(-1)
        for start in range(0, flat.size, SLICE):
            stop = start + SLICE
            held = self._held
            if self._sums is not None:
                total = self._sums[i][start:stop].copy()
            else:  # starts from the first update, not from zeros, to keep -0.0
                total = _scaled(_part(held[0][0][i][1], start, stop), held[0][1], wide, e)
                held = held[1:]
            for tensors, weight in held:
                _add_scaled(total, _part(tensors[i][1], start, stop), weight, e)
            values = _mean(total, self._weight, dtype, e)
            if values is None:
                return None
            flat[start:stop] = values
        return mean

    def _rescale(self, magnitudes: list[Fraction], scale: Weight) -> None:
        """Keep every float sum below overflow, whatever the values and weights.

        Each tensor's float sum is kept divided by a power of two, 2**e, chosen from a
        bound on its magnitude (the sum of each update's largest absolute value times
        its weight), so that no partial sum can reach infinity. Powers of two scale
        exactly: e stays 0, and results are bit for bit those of a plain sum, unless
        values near the float64 limit or large weights (``num_examples`` up to 2**62)
        would overflow; only then do values below ~1e-300 lose low bits.
        """
        # Each weighting and each addition rounds by at most half an ulp (2**970 at the
        # top of the range), and a sum rounds to infinity from 2**1024 - 2**970: so n
        # terms stay finite while the exact bound is at most this.
        terms = self.count  # the update being added is counted already
        threshold = 2**1024 - terms * 2**971
        for i, magnitude in enumerate(magnitudes):
            self._magnitudes[i] += magnitude * scale
            bound = self._magnitudes[i]
            needed = self._exps[i]
            if bound.numerator.bit_length() - bound.denominator.bit_length() >= 1022:
                while bound > threshold * Fraction(2) ** needed:  # near the limit: exactly
                    needed += 1
            if needed > self._exps[i]:
                if self._sums is not None and self._wide[i].kind in "fc":
                    _pow2(self._sums[i], self._exps[i] - needed)
                self._exps[i] = needed

    def _widen(self, tensors: Update, scale: Weight) -> None:
        """Choose each tensor's sum dtype so that adding ``tensors`` stays exact.

        Integer (and bool) tensors are summed exactly: in int64 while a bound on the
        weighted sum allows, else in Python integers (or fractions, for weights that
        are not integers). A float update turns that tensor's sum into float64, a
        complex one into complex128.
        """
        for i, (_, array) in enumerate(tensors):
            wide = self._wide[i]
            if wide.kind == "c" or (wide.kind == "f" and array.dtype.kind != "c"):
                continue
            wider: np.dtype[Any]
            if array.dtype.kind == "c":
                wider = np.dtype(np.complex128)
            elif array.dtype.kind in "biu":
                assert isinstance(array, np.ndarray)  # lazy integer tensors were rebuilt
                self._bounds[i] += _magnitude(array) * scale
                small = self._bounds[i] + self._weight + scale < _INT64_SAFE
                exact = isinstance(scale, int) and small and wide.kind != "O"
                wider = np.dtype(np.int64 if exact else object)
            else:
                wider = np.dtype(np.float64)
            if wider != wide:
                self._wide[i] = wider
                if self._sums is not None:
                    self._sums[i] = self._sums[i].astype(wider)
                    if wider.kind in "fc" and wide.kind not in "fc":  # now scaled as floats
                        _pow2(self._sums[i], -self._exps[i])

    def _fold(self) -> None:
        """Fold the updates held so far into running sums (and hold none after)."""
        held = self._held
        if self._sums is None:  # from the first update, as in result()
            first, weight = held[0]
            held = held[1:]
            self._sums = [
                np.empty(math.prod(shape), wide)
                for shape, wide in zip(self._shapes, self._wide, strict=True)
            ]
            for total, (_, array), e in zip(self._sums, first, self._exps, strict=True):
                for start in range(0, total.size, SLICE):
                    stop = start + SLICE
                    total[start:stop] = _scaled(_part(array, start, stop), weight, total.dtype, e)
        for tensors, weight in held:
            for total, (_, array), e in zip(self._sums, tensors, self._exps, strict=True):
                for start in range(0, total.size, SLICE):
                    stop = start + SLICE
                    _add_scaled(total[start:stop], _part(array, start, stop), weight, e)
        self._held = []
        self._held_bytes = self._held_files = 0
