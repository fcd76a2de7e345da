"""The stock aggregators and FedAvg: means of the round's updates, streamed.

* ``avg_values_if_data`` - element-wise unweighted mean (the stock service's default).
* ``average_layers`` - unweighted mean per layer; on tensors the same mean as
  ``avg_values_if_data`` (both names exist so that stock model definitions work; unlike
  the stock service, layers of different shapes are fine for both).
* ``fed_avg`` - the mean weighted by each update's ``num_examples`` (default 1).

The arithmetic (float64 sums, result dtypes, exact integers, no overflow) is
:class:`~fma_connect.server.mean.Accumulator`'s. Memory: the result, plus float64 running
sums of the model once more than a few updates are held (8 bytes an element), plus a few
slices; never a copy per update.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...codecs.base import Tensors
from ..mean import Accumulator
from .base import Aggregation, Contribution, Planned, RoundContext, no_args

__all__ = ["MEANS", "Mean", "MeanRound"]

_MEMORY = (
    "the result, float64 running sums of the model once updates are folded "
    "(8 bytes an element), and a few slices; updates are read from their files"
)


@dataclass(frozen=True)
class Mean:
    """A mean of the round's updates, weighted by ``num_examples`` or not.

    Attributes:
        name: Its registered name.
        summary: One line for listings.
        weighted: Whether updates count by their ``num_examples``.
        memory: What a round needs beyond its result.
    """

    name: str
    summary: str
    weighted: bool
    memory: str = _MEMORY

    def check_args(self, args: Any) -> dict[str, Any]:
        """The means take no arguments (see :func:`~.base.no_args`)."""
        return no_args(self.name, args)

    def start(self, context: RoundContext) -> Aggregation:
        """Begin a round."""
        return MeanRound(self.weighted)


class MeanRound:
    """One round's mean (see :class:`~fma_connect.server.mean.Accumulator`)."""

    def __init__(self, weighted: bool) -> None:
        self._weighted = weighted
        self._accumulator = Accumulator()

    def add(self, update: Contribution) -> str | None:
        """Add an update to the mean (see :meth:`Accumulator.add`)."""
        weight = update.weight if self._weighted else 1.0
        return self._accumulator.add(update.tensors, weight, typed=update.typed)

    def planned(self) -> list[Planned]:
        """See :meth:`Accumulator.planned`."""
        return self._accumulator.planned()

    def result(self, out: Sequence[np.ndarray] | None = None) -> Tensors:
        """See :meth:`Accumulator.result`."""
        return self._accumulator.result(out)

    def state(self) -> Tensors | None:
        """The means keep no state."""
        return None


#: The built-in means, in the order the docs list them.
MEANS = (
    Mean(
        "avg_values_if_data",
        "element-wise unweighted mean of the round's updates (the stock default)",
        weighted=False,
    ),
    Mean(
        "average_layers",
        "unweighted mean per layer (the stock name; the same mean on tensors)",
        weighted=False,
    ),
    Mean("fed_avg", "mean weighted by each update's num_examples (FedAvg)", weighted=True),
)
