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
"""

from __future__ import annotations

import math
import mmap
from collections.abc import Sequence
from fractions import Fraction
from typing import Any, Protocol, cast

import numpy as np

from ..codecs.base import Tensors
from .structure import by_name, positional

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


#: An update as :meth:`Accumulator.add` takes it: arrays, or tensors rebuilt on demand.
Update = Sequence[tuple[str, np.ndarray | LazyTensor]]
#: An update's weight, kept exact: integer tensors are averaged without rounding error.
Weight = int | Fraction
#: Integer sums (plus the total weight) stay below this to be summed in int64.
_INT64_SAFE = 2**62


class Layout:
    """The names, shapes and result dtypes of a round's accepted updates.

    What every aggregator of the reference server shares with the mean: the first
    accepted update fixes the structure; a later one is matched to it by name (or by
    position, for plain JSON), refused with a reason when it differs or holds NaN or
    infinity, and its dtypes promote the result's (see the module).

    Attributes:
        names: The tensors' names (those of a named update, once one was accepted).
        shapes: Their shapes.
        count: How many updates were accepted.
    """

    def __init__(self) -> None:
        self.names: list[str] = []
        self.shapes: list[tuple[int, ...]] = []
        #: Per tensor, the promoted dtype of the typed updates (None: none was typed),
        #: of the plain JSON ones (None: none was plain), and the range of their integers.
        self._typed: list[np.dtype[Any] | None] = []
        self._plain: list[np.dtype[Any] | None] = []
        self._span: list[tuple[int, int] | None] = []
        self.count = 0

    def accept(self, tensors: Update, *, typed: bool = True) -> tuple[Update, list[Fraction]] | str:
        """Check an update against the accepted ones and record it.

        Args:
            tensors: The update (arrays or lazy tensors).
            typed: Whether its dtypes are the sender's (False for plain JSON).

        Returns:
            Why it is refused (nothing is recorded then); else its tensors in the
            accepted order (lazy integer tensors rebuilt) and each one's largest
            absolute value.
        """
        # Integer and bool sums are bounded from whole tensors (_widen): those are rebuilt.
        tensors = [(name, _materialised(array)) for name, array in tensors]
        if self.names and not positional(self.names):
            # Named: match by name (by_name reads the names only, lazy tensors pass).
            tensors = by_name(self.names, cast(Tensors, tensors)) or tensors
        reason = self._mismatch(tensors)
        if reason is not None:
            return reason
        magnitudes: list[Fraction] = []
        for name, array in tensors:  # one pass: the largest value, and whether all are finite
            magnitude = _max_abs(array)
            if magnitude is None:
                return f"tensor {name!r} holds NaN or infinite values"
            magnitudes.append(magnitude)
        if not self.names:
            self.names = [name for name, _ in tensors]
            self.shapes = [array.shape for _, array in tensors]
            self._typed = [None] * len(tensors)
            self._plain = [None] * len(tensors)
            self._span = [None] * len(tensors)
        elif positional(self.names):  # the result takes the names of any named update
            self.names = [name for name, _ in tensors]
        seen = self._typed if typed else self._plain
        for i, (_, array) in enumerate(tensors):
            before = seen[i]
            seen[i] = array.dtype if before is None else _promote(before, array.dtype)
            if not typed and array.dtype.kind in "iu" and array.size:
                assert isinstance(array, np.ndarray)  # lazy integer tensors were rebuilt
                low, high = int(array.min()), int(array.max())
                span = self._span[i]
                self._span[i] = (
                    (low, high) if span is None else (min(low, span[0]), max(high, span[1]))
                )
        self.count += 1
        return tensors, magnitudes

    def planned(self) -> list[tuple[str, tuple[int, ...], np.dtype[Any]]]:
        """The name, shape and result dtype of each tensor (see the module).

        Raises:
            ValueError: no update was accepted.
        """
        if not self.count:
            raise ValueError("no update was added")
        return [
            (name, shape, _result_dtype(typed, plain, span))
            for name, shape, typed, plain, span in zip(
                self.names, self.shapes, self._typed, self._plain, self._span, strict=True
            )
        ]

    def _mismatch(self, tensors: Update) -> str | None:
        if not tensors:
            return "the update holds no tensors"
        for name, array in tensors:
            if array.dtype.kind not in "biufcV":
                return f"tensor {name!r} has the non-numeric dtype {array.dtype}"
        if not self.names:
            return None
        if len(tensors) != len(self.names):
            return (
                f"expected {len(self.names)} tensors like the round's accepted updates, "
                f"got {len(tensors)}"
            )
        by_position = positional(self.names) or positional([n for n, _ in tensors])
        for i, ((name, array), expected, shape) in enumerate(
            zip(tensors, self.names, self.shapes, strict=True)
        ):
            if not by_position and name != expected:
                return (
                    f"tensor {i} is named {name!r}; the round's accepted updates have "
                    f"{expected!r} there"
                )
            if array.shape != shape:
                return (
                    f"tensor {expected!r} has shape {list(array.shape)}; the round's "
                    f"accepted updates have {list(shape)}"
                )
        return None


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


def _views_files(arrays: Sequence[np.ndarray]) -> bool:
    """Whether every array views a memory-mapped file, which costs no memory to hold.

    Anything else (plain JSON parsed, a delta rebuilt whole) is a copy of an update in
    memory: :meth:`Accumulator.add` folds such an update into the sums at once.
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


def _max_abs(array: np.ndarray | LazyTensor) -> Fraction | None:
    """The largest absolute value in a tensor, exactly; None if it holds NaN or infinity."""
    if array.size == 0:
        return Fraction(0)
    if isinstance(array, np.ndarray) and array.dtype.kind in "biu":
        return Fraction(_magnitude(array))
    largest = 0.0
    for start in range(0, array.size, SLICE):
        part = _part(array, start, start + SLICE)
        if part.dtype.kind == "V":  # ml_dtypes floats: numpy's reductions need a real dtype
            part = part.astype(np.float64)
        pieces = (part.real, part.imag) if part.dtype.kind == "c" else (part,)
        for piece in pieces:
            high, low = float(piece.max()), float(piece.min())
            if not (math.isfinite(high) and math.isfinite(low)):
                return None
            largest = max(largest, abs(high), abs(low))
    return Fraction(largest)


def _start_wide(dtype: np.dtype[Any]) -> np.dtype[Any]:
    """The sum dtype of a tensor's first update (see :meth:`Accumulator._widen`)."""
    if dtype.kind == "c":
        return np.dtype(np.complex128)
    return np.dtype(np.int64 if dtype.kind in "biu" else np.float64)


def _exact(weight: float) -> Weight:
    """A weight as an exact number: an int when it is whole, else a fraction."""
    if isinstance(weight, int):
        return weight
    return int(weight) if float(weight).is_integer() else Fraction(weight)


def _magnitude(array: np.ndarray) -> int:
    """The largest absolute value in an integer or bool array, as a Python int."""
    if array.size == 0:
        return 0
    if array.dtype.kind == "b":
        return 1
    return max(abs(int(array.max())), abs(int(array.min())))


def _mean(total: np.ndarray, weight: Weight, dtype: np.dtype[Any], e: int = 0) -> np.ndarray | None:
    """Divide a slice of sums by the total weight and cast it to ``dtype``.

    Args:
        total: The slice of sums (float sums divided by 2**e).
        weight: The total weight.
        dtype: The mean's dtype.
        e: See :meth:`Accumulator._rescale`.

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


def _promote(first: np.dtype[Any], second: np.dtype[Any]) -> np.dtype[Any]:
    """numpy's promotion of two dtypes; float64 (or complex128) where it has none."""
    if first == second:
        return first
    try:
        return np.result_type(first, second)
    except TypeError:  # e.g. ml_dtypes' bfloat16 with an integer type
        complex_ = "c" in (first.kind, second.kind)
        return np.dtype(np.complex128 if complex_ else np.float64)


def _result_dtype(
    typed: np.dtype[Any] | None, plain: np.dtype[Any] | None, span: tuple[int, int] | None
) -> np.dtype[Any]:
    """The dtype of a tensor's mean, from its typed and plain updates (see the module).

    Args:
        typed: The promoted dtype of its typed updates, if any.
        plain: The promoted dtype of its plain JSON updates as decoded (float64,
            complex128, int64 or bool), if any.
        span: The least and greatest integer of its plain JSON updates, if any.
    """
    if typed is None:  # plain JSON only: float64 as the stock service answers
        return np.dtype(np.complex128 if plain is not None and plain.kind == "c" else np.float64)
    if plain is None or typed.kind == "c" or (typed.kind in "fV" and plain.kind != "c"):
        return typed  # a float type holds plain JSON numbers as well as JSON did
    if plain.kind in "fc":
        return _promote(typed, np.dtype(np.float64 if plain.kind == "f" else np.complex128))
    if span is None or _holds(typed, *span):
        return typed
    low, high = span
    kind = "u" if typed.kind in "bu" and low >= 0 else "i"
    for size in (1, 2, 4, 8):  # the smallest integer type that holds both
        candidate = np.dtype(f"{kind}{size}")
        if np.can_cast(typed, candidate) and _holds(candidate, low, high):
            return candidate
    return np.dtype(np.float64)


def _holds(dtype: np.dtype[Any], low: int, high: int) -> bool:
    """Whether a bool or integer dtype holds every integer from ``low`` to ``high``."""
    if dtype.kind == "b":
        return low >= 0 and high <= 1
    info = np.iinfo(dtype)
    return info.min <= low and high <= info.max


def all_finite(array: np.ndarray) -> bool:
    """Whether a tensor holds no NaN or infinity (checked a slice at a time)."""
    if array.dtype.kind in "biu":
        return True
    flat = _flat(array)
    for start in range(0, flat.size, SLICE):
        part = flat[start : start + SLICE]
        if part.dtype.kind == "V":  # ml_dtypes floats: numpy's isfinite needs a real dtype
            part = part.astype(np.float64)
        if not np.isfinite(part).all():
            return False
    return True


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


def part(tensor: np.ndarray | LazyTensor, start: int, stop: int) -> np.ndarray:
    """Flat elements ``start`` to ``stop`` of an array (a view where it can be) or a lazy
    tensor (rebuilt): how aggregators read an update a slice at a time."""
    return _part(tensor, start, stop)


def cast_values(values: np.ndarray, dtype: np.dtype[Any]) -> np.ndarray:
    """Float64 (or complex128) results in a result ``dtype`` as the mean casts them:
    integers rounded to nearest and clipped to their range, bools from 0.5 up."""
    return _cast(values, dtype)


def views_files(arrays: Sequence[np.ndarray]) -> bool:
    """Whether every array views a memory-mapped file (holding it costs no memory)."""
    return _views_files(arrays)
