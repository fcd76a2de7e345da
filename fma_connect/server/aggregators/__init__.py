"""The reference server's aggregators: the interface, and the built-in ones.

An aggregator is registered by a plugin's ``fma_connect_register_aggregators(registry)``
hook (the built-ins by :mod:`fma_connect.builtin_aggregators`, through the same hook);
a model names it in its ``aggregator`` field, with optional ``aggregator_args``. The
interface (:class:`Aggregator`, :class:`Aggregation`, :class:`Contribution`,
:class:`RoundContext`) is in :mod:`.base`; :func:`fma_connect.testing.check_aggregator`
is the contract an aggregator must meet.

Modules::

    base.py     the interface, argument checks (check_numbers, no_args)
    means.py    avg_values_if_data, average_layers, fed_avg (mean.Accumulator)
    fed_opt.py  fed_adam, fed_yogi: server optimizers with moments kept per model
    held.py     HeldUpdates: every update held as files, read a slice of all at a time
    robust.py   median, trimmed_mean (CoordinateWise: the base for such methods)

docs/ROUNDS.md lists every built-in with its arguments, memory and robustness.
"""

from __future__ import annotations

from .base import (
    Aggregation,
    Aggregator,
    AggregatorArgsError,
    Contribution,
    Number,
    Planned,
    RoundContext,
    check_numbers,
    no_args,
)
from .fed_opt import FedOpt
from .held import HeldUpdates
from .means import MEANS, Mean
from .robust import CoordinateWise, Median, TrimmedMean

__all__ = [
    "BUILTIN_AGGREGATORS",
    "Aggregation",
    "Aggregator",
    "AggregatorArgsError",
    "Contribution",
    "CoordinateWise",
    "FedOpt",
    "HeldUpdates",
    "Mean",
    "Median",
    "Number",
    "Planned",
    "RoundContext",
    "TrimmedMean",
    "check_numbers",
    "no_args",
]

#: The aggregators fma_connect ships, registered by :mod:`fma_connect.builtin_aggregators`.
BUILTIN_AGGREGATORS: tuple[Aggregator, ...] = (
    *MEANS,
    FedOpt(yogi=False),
    FedOpt(yogi=True),
    Median(),
    TrimmedMean(),
)
