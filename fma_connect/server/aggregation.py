"""Aggregators and aggregation requirements of the reference server.

Aggregators (the stock names plus a weighted FedAvg):

* ``avg_values_if_data`` - element-wise unweighted mean of the round's updates.
* ``average_layers`` - unweighted mean per layer. On tensors this is the same mean as
  ``avg_values_if_data``; both names exist so that stock model definitions work. Unlike
  the stock service, layers of different shapes are fine for both.
* ``fed_avg`` - the mean weighted by each update's ``num_examples`` (default 1).

Requirements: ``all_clients`` (every registered client sent an update) and
``require_x_updates`` (``requirement_args: [x]``); none means one update is enough.

:class:`Accumulator` sums one update at a time in float64 (complex128 for complex
tensors), so memory grows with the model, not with the number of updates. An update
whose structure differs from the first accepted one is refused with a reason and the
others still count; the mean is cast back to each tensor's input dtype (integers
rounded to nearest).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any

import numpy as np

from ..codecs.base import Tensors

__all__ = [
    "AGGREGATORS",
    "REQUIREMENTS",
    "Accumulator",
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
        return f"{requirement or 'no requirement'} takes no arguments."
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


class Accumulator:
    """Running weighted sum of updates with the structure of the first one added."""

    def __init__(self) -> None:
        self._names: list[str] = []
        self._dtypes: list[np.dtype[Any]] = []
        self._sums: list[np.ndarray] = []
        self._weight = 0.0
        self._typed = False
        self.count = 0

    def add(self, tensors: Tensors, weight: float = 1.0, *, typed: bool = True) -> str | None:
        """Add an update; return why it was refused (and leave the sum unchanged), or None.

        Args:
            tensors: The update.
            weight: Its weight in the mean.
            typed: Whether its dtypes are the sender's (False for plain JSON, whose
                dtypes are guessed from the numbers): the result takes the dtypes of the
                first typed update, else of the first update.
        """
        reason = self._mismatch(tensors)
        if reason is not None:
            return reason
        if typed and not self._typed:
            self._dtypes = [array.dtype for _, array in tensors]
            self._typed = True
        if not self._sums:
            self._names = [name for name, _ in tensors]
            self._dtypes = [array.dtype for _, array in tensors]
            self._sums = [
                np.zeros(a.shape, np.complex128 if a.dtype.kind == "c" else np.float64)
                for _, a in tensors
            ]
        for total, (_, array) in zip(self._sums, tensors, strict=True):
            term = array.astype(total.dtype)  # one temporary of this tensor's size
            if weight != 1.0:
                term *= weight
            total += term
        self._weight += weight
        self.count += 1
        return None

    def result(self) -> Tensors:
        """Return the weighted mean, each tensor in its input dtype (see :meth:`add`)."""
        if not self.count:
            raise ValueError("no update was added")
        return [
            (name, _cast(total / self._weight, dtype))
            for name, dtype, total in zip(self._names, self._dtypes, self._sums, strict=True)
        ]

    def _mismatch(self, tensors: Tensors) -> str | None:
        if not tensors:
            return "the update holds no tensors"
        for name, array in tensors:
            if array.dtype.kind not in "biufcV":
                return f"tensor {name!r} has the non-numeric dtype {array.dtype}"
            if not _finite(array):
                return f"tensor {name!r} holds NaN or infinite values"
        if not self._sums:
            return None
        if len(tensors) != len(self._sums):
            return (
                f"expected {len(self._sums)} tensors like the round's first update, "
                f"got {len(tensors)}"
            )
        by_position = _positional(self._names) or _positional([n for n, _ in tensors])
        for i, ((name, array), expected, total) in enumerate(
            zip(tensors, self._names, self._sums, strict=True)
        ):
            if not by_position and name != expected:
                return (
                    f"tensor {i} is named {name!r}; the round's first update has {expected!r} there"
                )
            if array.shape != total.shape:
                return (
                    f"tensor {expected!r} has shape {list(array.shape)}; the round's first "
                    f"update has {list(total.shape)}"
                )
            if array.dtype.kind == "c" and total.dtype.kind != "c":
                return f"tensor {expected!r} is complex; the round's first update has it real"
        return None


def _finite(array: np.ndarray) -> bool:
    if array.dtype.kind in "biu":
        return True
    wide = array.astype(np.complex128 if array.dtype.kind == "c" else np.float64)
    return bool(np.isfinite(wide).all())


def _positional(names: list[str]) -> bool:
    return all(name == str(i) for i, name in enumerate(names))


def _cast(mean: np.ndarray, dtype: np.dtype[Any]) -> np.ndarray:
    if dtype.kind == "b":
        flags: np.ndarray = mean.real >= 0.5
        return flags
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        rounded: np.ndarray = np.clip(np.rint(mean.real), info.min, info.max)
        return rounded.astype(dtype)
    if dtype.kind in "fV" and mean.dtype.kind == "c":
        mean = mean.real
    return mean.astype(dtype)
