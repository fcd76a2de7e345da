"""Krum and multi-Krum (Blanchard et al., "Machine Learning with Adversaries: Byzantine
Tolerant Gradient Descent", NeurIPS 2017).

Each update's score is the sum of its squared distances to its ``n - f - 2`` nearest
other updates (at least one); the ``m`` updates with the lowest scores are averaged
(``m = 1``: Krum, the single most central update). With ``f`` bad updates among ``n > 2f
+ 2``, a bad update far from the others scores worse than every honest one, so it is
never picked.

Arguments (``aggregator_args``): ``f`` (the bad updates to tolerate, a whole number,
default 1) and ``m`` (how many updates to average, default 1; more than ``n`` is ``n``).

Unweighted (``num_examples`` is ignored: a bad client could claim any count), and
independent of the order of updates: distances are computed pair by pair from the same
values whatever the order, and ties are broken by a digest of the updates' values.
Refuses complex tensors, and NaN or infinity, like the built-in robust aggregators.

Memory: the result (twice: the chosen updates' mean, then in the round's dtypes), one
stack of about 2 MiB (a slice of every update, see
:class:`~fma_connect.server.aggregators.HeldUpdates`) and the ``n x n`` distances; the
updates are read from their blob files (those in plain JSON or ``sparse``, from a spill
file on disk).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from fma_connect import Tensors
from fma_connect.server.aggregators import (
    Aggregation,
    AggregatorArgsError,
    Contribution,
    HeldUpdates,
    Number,
    Planned,
    RoundContext,
    check_numbers,
)
from fma_connect.server.mean import Accumulator, cast_values

__all__ = ["Krum", "KrumRound"]

#: What krum takes (``aggregator_args``); both must be whole numbers.
ARGS = {
    "f": Number(1, 0, meaning="the bad updates to tolerate"),
    "m": Number(1, 1, meaning="how many of the best updates to average"),
}


class Krum:
    """The ``krum`` aggregator (see the module)."""

    name = "krum"
    summary = "Krum / multi-Krum: the mean of the m updates closest to their neighbours"
    weighted = False
    memory = (
        "the result, a stack of about 2 MiB (a slice of every update) and n x n distances; "
        "updates are read from their blob files"
    )

    def check_args(self, args: Any) -> dict[str, Any]:
        """``{"f": int >= 0, "m": int >= 1}``, each optional."""
        checked = check_numbers(self.name, args, ARGS)
        for key, value in checked.items():
            if not value.is_integer():
                raise AggregatorArgsError(f"krum's {key} must be a whole number, got {value:g}.")
        return {key: int(value) for key, value in checked.items()}

    def start(self, context: RoundContext) -> Aggregation:
        """Begin a round."""
        return KrumRound(self.check_args(dict(context.args)))


class KrumRound:
    """One round of :class:`Krum`: hold every update, score, average the best."""

    def __init__(self, args: dict[str, int]) -> None:
        self._f, self._m = args["f"], args["m"]
        self._held = HeldUpdates()

    def add(self, update: Contribution) -> str | None:
        """Hold the update (as a view of its file where it is one)."""
        return self._held.add(update, "krum")

    def planned(self) -> list[Planned]:
        """The names, shapes and dtypes the built-in mean would give."""
        return self._held.layout.planned()

    def result(self, out: Sequence[np.ndarray] | None = None) -> Tensors:
        """The mean of the ``m`` best-scored updates."""
        planned = self.planned()
        try:
            mean = Accumulator()
            for index in self._choose():
                arrays = self._held.arrays(index)
                reason = mean.add(list(zip(self._held.layout.names, arrays, strict=True)))
                assert reason is None, reason  # held updates were checked already
            # The chosen updates' mean, in the dtypes of the whole round's (planned()).
            result: Tensors = []
            for i, ((name, values), (_, shape, dtype)) in enumerate(
                zip(mean.result(), planned, strict=True)
            ):
                target = np.empty(shape, dtype) if out is None else out[i]
                target[...] = cast_values(np.asarray(values, np.float64), dtype)
                result.append((name, target))
            return result
        finally:
            self._held.close()

    def _choose(self) -> list[int]:
        """The indices of the ``m`` updates with the lowest scores, best first."""
        n = len(self._held)
        distances = np.zeros((n, n), np.float64)
        digests = [hashlib.blake2b(digest_size=16) for _ in range(n)]
        for tensor, shape in enumerate(self._held.layout.shapes):
            size = int(np.prod(shape))
            step = self._held.slice_length(tensor)
            for start in range(0, size, step):
                stack = self._held.stack(tensor, start, start + step)
                for i in range(n):
                    # Row by row, pair by pair: the same numbers whatever the order.
                    distances[i] += np.square(stack - stack[i]).sum(axis=1)
                    digests[i].update(stack[i].tobytes())
        neighbours = min(max(n - self._f - 2, 1), n - 1)
        scores = [
            float(np.sort(np.delete(distances[i], i))[:neighbours].sum()) if n > 1 else 0.0
            for i in range(n)
        ]
        ranked = sorted(range(n), key=lambda i: (scores[i], digests[i].digest()))
        return ranked[: min(self._m, n)]

    def state(self) -> Tensors | None:
        """Krum keeps no state."""
        return None
