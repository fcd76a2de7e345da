"""Aggregators and aggregation requirements of the reference server.

Aggregators (the stock names plus a weighted FedAvg):

* ``avg_values_if_data`` - element-wise unweighted mean of the round's updates.
* ``average_layers`` - unweighted mean per layer. On tensors this is the same mean as
  ``avg_values_if_data``; both names exist so that stock model definitions work. Unlike
  the stock service, layers of different shapes are fine for both.
* ``fed_avg`` - the mean weighted by each update's ``num_examples`` (default 1).

Requirements: ``all_clients`` (every registered client sent an update) and
``require_x_updates`` (``requirement_args: [x]``); none means one update is enough.

:class:`Accumulator` averages in float64 (complex128 for complex tensors), slice by
slice: the updates it holds are views of memory-mapped blob files, so a round needs
the result's memory plus a few slices, not a float64 copy of every update. Past
:data:`FOLD_AT` held updates they are folded into float64 running sums (memory then
grows with the model, never with the number of updates). An update whose structure
differs from the first accepted one is refused with a reason and the others still
count.

The mean of each tensor is cast to a dtype that holds every update's values, whatever
their order: numpy's promotion of the senders' dtypes (float16 and float32 make
float32, int8 and float64 make float64), with integers rounded to nearest. Plain JSON
updates carry no dtype: next to a sender's float type they take it; next to integer
types their layer counts as float64 if it holds a float, else as the smallest integer
type that holds its values. A round of plain JSON updates only answers float64, as
the stock service does.

Integer and bool tensors are summed exactly instead (int64 while that cannot overflow,
else Python integers), so int64 and uint64 values survive whole. Named tensors are
matched by name, in any order; plain JSON ones by position (the mean keeps the names).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Sequence
from fractions import Fraction
from typing import Any

import numpy as np

from ..codecs.base import Tensors
from .structure import by_name

__all__ = [
    "AGGREGATORS",
    "REQUIREMENTS",
    "Accumulator",
    "all_finite",
    "check_requirement_args",
    "requirement_met",
]

#: Aggregator name -> whether it weights updates by ``num_examples``.
AGGREGATORS: dict[str, bool] = {
    "avg_values_if_data": False,
    "average_layers": False,
    "fed_avg": True,
}


def _all_clients(clients: Collection[str], senders: Sequence[str], args: Sequence[Any]) -> bool:
    return bool(clients) and set(clients) <= set(senders)


def _require_x_updates(
    clients: Collection[str], senders: Sequence[str], args: Sequence[Any]
) -> bool:
    return len(senders) >= int(args[0])


#: Requirement name -> ``check(registered clients, senders of pending updates, args)``.
REQUIREMENTS: dict[str, Callable[[Collection[str], Sequence[str], Sequence[Any]], bool]] = {
    "all_clients": _all_clients,
    "require_x_updates": _require_x_updates,
}


def check_requirement_args(requirement: str | None, args: Any) -> str | None:
    """Return why ``args`` do not suit ``requirement``, or None when they do."""
    if requirement == "require_x_updates":
        if not isinstance(args, list) or len(args) != 1 or type(args[0]) is not int or args[0] < 1:
            return "require_x_updates takes one positive integer: [x]."
    elif args not in (None, []):
        if requirement is None:
            return (
                f"requirement_args {args!r} need a requirement: without one, every update "
                "is aggregated on its own. Use requirement 'require_x_updates' with [x], or "
                "drop requirement_args."
            )
        return f"{requirement} takes no arguments, got {args!r}: drop requirement_args."
    return None


def requirement_met(
    requirement: str | None, args: Any, clients: Collection[str], senders: Sequence[str]
) -> bool:
    """Whether a round may run, given the registered clients and the pending updates' senders."""
    if not senders:
        return False
    if requirement is None:
        return True
    return REQUIREMENTS[requirement](clients, senders, args or [])


#: Elements per slice when checking, summing and casting (8 MiB of float64).
SLICE = 1 << 20
#: Updates held as views before they are folded into running sums.
FOLD_AT = 16
#: An update's weight, kept exact: integer tensors are averaged without rounding error.
Weight = int | Fraction
#: Integer sums (plus the total weight) stay below this to be summed in int64.
_INT64_SAFE = 2**62


class Accumulator:
    """Weighted mean of updates with the structure of the first one added."""

    def __init__(self) -> None:
        self._names: list[str] = []
        #: Per tensor, the promoted dtype of the typed updates (None: none was typed),
        #: of the plain JSON ones (None: none was plain), and the range of their integers.
        self._typed: list[np.dtype[Any] | None] = []
        self._plain: list[np.dtype[Any] | None] = []
        self._span: list[tuple[int, int] | None] = []
        self._shapes: list[tuple[int, ...]] = []
        self._wide: list[np.dtype[Any]] = []
        self._held: list[tuple[Tensors, Weight]] = []
        self._sums: list[np.ndarray] | None = None
        self._weight: Weight = 0
        #: Per integer tensor, a bound on the magnitude of its weighted sum.
        self._bounds: list[Weight] = []
        self.count = 0

    def add(self, tensors: Tensors, weight: float = 1.0, *, typed: bool = True) -> str | None:
        """Add an update; return why it was refused (and leave the mean unchanged), or None.

        The update's arrays are kept (not copied) until :meth:`result` or a fold.

        Args:
            tensors: The update.
            weight: Its weight in the mean.
            typed: Whether its dtypes are the sender's (False for plain JSON, whose
                dtypes are guessed from the numbers); see the module for the result's.
        """
        if self._names and not _positional(self._names):
            tensors = by_name(self._names, tensors) or tensors  # named: match by name
        reason = self._mismatch(tensors)
        if reason is not None:
            return reason
        if not self._names:
            self._names = [name for name, _ in tensors]
            self._shapes = [array.shape for _, array in tensors]
            self._wide = [_start_wide(array.dtype) for _, array in tensors]
            self._typed = [None] * len(tensors)
            self._plain = [None] * len(tensors)
            self._span = [None] * len(tensors)
            self._bounds = [0] * len(tensors)
        elif _positional(self._names):  # the mean takes the names of any named update
            self._names = [name for name, _ in tensors]
        seen = self._typed if typed else self._plain
        for i, (_, array) in enumerate(tensors):
            before = seen[i]
            seen[i] = array.dtype if before is None else _promote(before, array.dtype)
            if not typed and array.dtype.kind in "iu" and array.size:
                low, high = int(array.min()), int(array.max())
                span = self._span[i]
                self._span[i] = (
                    (low, high) if span is None else (min(low, span[0]), max(high, span[1]))
                )
        scale = _exact(weight)
        self._widen(tensors, scale)
        self._held.append((tensors, scale))
        self._weight += scale
        self.count += 1
        if len(self._held) >= FOLD_AT:
            self._fold()
        return None

    def result(self) -> Tensors:
        """Return the weighted mean, each tensor in the dtype the module describes."""
        if not self.count:
            raise ValueError("no update was added")
        out: Tensors = []
        for i, (name, shape, wide) in enumerate(
            zip(self._names, self._shapes, self._wide, strict=True)
        ):
            dtype = _result_dtype(self._typed[i], self._plain[i], self._span[i])
            mean = np.empty(shape, dtype)
            flat = mean.reshape(-1)
            for start in range(0, flat.size, SLICE):
                part = slice(start, start + SLICE)
                held = self._held
                if self._sums is not None:
                    total = self._sums[i][part].copy()
                else:  # starts from the first update, not from zeros, to keep -0.0
                    total = _scaled(_flat(held[0][0][i][1])[part], held[0][1], wide)
                    held = held[1:]
                for tensors, weight in held:
                    _add_scaled(total, _flat(tensors[i][1])[part], weight)
                flat[part] = _mean(total, self._weight, dtype)
            out.append((name, mean))
        return out

    def _widen(self, tensors: Tensors, scale: Weight) -> None:
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

    def _fold(self) -> None:
        held = self._held
        if self._sums is None:  # from the first update, as in result()
            first, weight = held[0]
            held = held[1:]
            self._sums = [
                np.empty(math.prod(shape), wide)
                for shape, wide in zip(self._shapes, self._wide, strict=True)
            ]
            for total, (_, array) in zip(self._sums, first, strict=True):
                source = _flat(array)
                for start in range(0, total.size, SLICE):
                    part = slice(start, start + SLICE)
                    total[part] = _scaled(source[part], weight, total.dtype)
        for tensors, weight in held:
            for total, (_, array) in zip(self._sums, tensors, strict=True):
                source = _flat(array)
                for start in range(0, total.size, SLICE):
                    part = slice(start, start + SLICE)
                    _add_scaled(total[part], source[part], weight)
        self._held = []

    def _mismatch(self, tensors: Tensors) -> str | None:
        if not tensors:
            return "the update holds no tensors"
        for name, array in tensors:
            if array.dtype.kind not in "biufcV":
                return f"tensor {name!r} has the non-numeric dtype {array.dtype}"
            if not all_finite(array):
                return f"tensor {name!r} holds NaN or infinite values"
        if not self._names:
            return None
        if len(tensors) != len(self._names):
            return (
                f"expected {len(self._names)} tensors like the round's first update, "
                f"got {len(tensors)}"
            )
        by_position = _positional(self._names) or _positional([n for n, _ in tensors])
        for i, ((name, array), expected, shape) in enumerate(
            zip(tensors, self._names, self._shapes, strict=True)
        ):
            if not by_position and name != expected:
                return (
                    f"tensor {i} is named {name!r}; the round's first update has {expected!r} there"
                )
            if array.shape != shape:
                return (
                    f"tensor {expected!r} has shape {list(array.shape)}; the round's first "
                    f"update has {list(shape)}"
                )
        return None


def _flat(array: np.ndarray) -> np.ndarray:
    # A view for the contiguous arrays codecs produce; a copy only for strided input.
    return array.reshape(-1)


def _scaled(part: np.ndarray, weight: Weight, wide: np.dtype[Any]) -> np.ndarray:
    """``part * weight`` in the sum dtype ``wide``: one slice-sized array."""
    term = part.astype(wide)
    if weight != 1:
        term *= weight if wide.kind in "iO" else float(weight)
    return term


def _add_scaled(total: np.ndarray, part: np.ndarray, weight: Weight) -> None:
    total += _scaled(part, weight, total.dtype)


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


def _mean(total: np.ndarray, weight: Weight, dtype: np.dtype[Any]) -> np.ndarray:
    """Divide a slice of sums by the total weight and cast it to ``dtype``."""
    if total.dtype.kind not in "iO":
        total /= float(weight)
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


def _positional(names: list[str]) -> bool:
    return all(name == str(i) for i, name in enumerate(names))


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
