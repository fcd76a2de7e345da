"""Robust aggregators: each coordinate combined across all of the round's updates.

* ``median`` - the coordinate-wise median. Each coordinate is some honest client's
  value (or between two) while fewer than half of the round's updates are bad, however
  far off the bad ones are. No arguments.
* ``trimmed_mean`` - per coordinate, drop the ``floor(trim * n)`` largest and as many
  smallest of the ``n`` values, and average the rest. Resists up to ``floor(trim * n)``
  bad updates (on each side); ``trim`` (default 0.1) is in [0, 0.5): 0 is the plain mean.

Both are unweighted (``num_examples`` is ignored: a client could claim any count, which
would defeat the robustness) and order-independent (values are sorted per coordinate).
They refuse complex tensors, which have no order. Values are combined in float64 and
the result takes the dtype the mean would (:mod:`~fma_connect.server.mean`: the
promotion of the updates' dtypes, integers rounded to nearest); integers beyond 2**53
are rounded by float64. Updates with NaN or infinity are refused, like the mean's.
``sparse`` updates are rebuilt a slice at a time.

Memory (see :mod:`.held`): the result, one stack of about 2 MiB (a slice of every
update), the updates as views of their blob files, and a spill file on disk for
updates not in binary blob files (plain JSON, ``sparse``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from ...codecs.base import Tensors
from ..mean import cast_values
from .base import (
    Aggregation,
    Contribution,
    Number,
    Planned,
    RoundContext,
    check_numbers,
    no_args,
)
from .held import HeldUpdates

__all__ = ["CoordinateWise", "CoordinateWiseRound", "Median", "TrimmedMean"]

_MEMORY = (
    "the result and a stack of about 2 MiB (one slice of every update); updates are "
    "read from their blob files, those in plain JSON or sparse from a spill file on disk"
)


class CoordinateWise:
    """Base of aggregators that combine each coordinate's values across all updates.

    Subclasses set :attr:`name` and :attr:`summary` and implement :meth:`combine`
    (and :meth:`check_args` if they take arguments): rounds, structure checks, dtypes
    and the slice-wise pass over every update are done here.
    """

    name = ""
    summary = ""
    weighted = False
    memory = _MEMORY

    def check_args(self, args: Any) -> dict[str, Any]:
        """Take no arguments (override to take some)."""
        return no_args(self.name, args)

    def start(self, context: RoundContext) -> Aggregation:
        """Begin a round (with the defaults of arguments the context leaves out)."""
        return CoordinateWiseRound(self, self.check_args(dict(context.args) or None))

    def combine(self, stack: np.ndarray, weights: np.ndarray, args: dict[str, Any]) -> np.ndarray:
        """One slice's result from every update's values.

        Args:
            stack: ``(updates, elements)`` float64 values, one row per update (do not
                keep it: it is reused).
            weights: Each update's ``num_examples`` (1 when not given).
            args: The checked ``aggregator_args``.

        Returns:
            ``(elements,)`` float64 values.
        """
        raise NotImplementedError


class CoordinateWiseRound:
    """One round of a :class:`CoordinateWise` aggregator."""

    def __init__(self, method: CoordinateWise, args: dict[str, Any]) -> None:
        self._method, self._args = method, args
        self._held = HeldUpdates()

    def add(self, update: Contribution) -> str | None:
        """Hold the update (see :class:`~.held.HeldUpdates`)."""
        return self._held.add(update, self._method.name)

    def planned(self) -> list[Planned]:
        """The mean's names, shapes and dtypes (see :meth:`~.mean.Layout.planned`)."""
        return self._held.layout.planned()

    def result(self, out: Sequence[np.ndarray] | None = None) -> Tensors:
        """Combine every coordinate, a slice of every update at a time."""
        planned = self.planned()
        if out is not None and [(a.shape, a.dtype) for a in out] != [p[1:] for p in planned]:
            raise ValueError("out must hold an array per planned() tensor")
        weights = np.asarray(self._held.weights, np.float64)
        result: Tensors = []
        try:
            for i, (name, shape, dtype) in enumerate(planned):
                target = np.empty(shape, dtype) if out is None else out[i]
                flat = target.reshape(-1)
                step = self._held.slice_length(i)
                for start in range(0, flat.size, step):
                    stack = self._held.stack(i, start, start + step)
                    values = self._method.combine(stack, weights, self._args)
                    flat[start : start + step] = cast_values(values, dtype)
                result.append((name, target))
        finally:
            self._held.close()
        return result

    def state(self) -> Tensors | None:
        """No state."""
        return None


class Median(CoordinateWise):
    """``median``: the coordinate-wise median (see the module)."""

    name = "median"
    summary = "coordinate-wise median: robust while fewer than half the updates are bad"

    def combine(self, stack: np.ndarray, weights: np.ndarray, args: dict[str, Any]) -> np.ndarray:
        """The median of each column."""
        values: np.ndarray = np.median(stack, axis=0)
        return values


class TrimmedMean(CoordinateWise):
    """``trimmed_mean``: the mean of each coordinate without its extremes (see the module)."""

    name = "trimmed_mean"
    summary = "coordinate-wise mean without the trim fraction of largest and smallest values"
    ARGS: ClassVar[dict[str, Number]] = {
        "trim": Number(
            0.1, 0.0, 0.5, high_open=True, meaning="the share of values dropped at each end"
        )
    }

    def check_args(self, args: Any) -> dict[str, Any]:
        """``{"trim": t}``, t in [0, 0.5) (default 0.1)."""
        return check_numbers(self.name, args, self.ARGS)

    def combine(self, stack: np.ndarray, weights: np.ndarray, args: dict[str, Any]) -> np.ndarray:
        """Sort each column, drop ``floor(trim * n)`` values at each end, average the rest."""
        n = stack.shape[0]
        cut = int(args["trim"] * n + 1e-9)  # floor, but 0.29 * 100 is 28.999...
        ordered = np.sort(stack, axis=0)
        kept = ordered[cut : n - cut]
        values: np.ndarray = kept.sum(axis=0) / kept.shape[0]
        return values
