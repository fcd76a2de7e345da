"""What an aggregator of the reference server is, and what a round hands it.

An :class:`Aggregator` is registered by name (``fma_connect_register_aggregators``);
a model's ``aggregator`` field names one and its ``aggregator_args`` are checked by
:meth:`Aggregator.check_args` when the model is created or changed. Each round then
calls :meth:`Aggregator.start` for an :class:`Aggregation`, and drives it::

    aggregation = aggregator.start(RoundContext(model_id, args, current, state))
    for update in updates:                  # one at a time, oldest first
        reason = aggregation.add(update)    # a Contribution; None: accepted
    planned = aggregation.planned()         # names, shapes, dtypes of the result
    result = aggregation.result(out)        # computed into out (the blob's file) if it can
    state = aggregation.state()             # tensors kept for the next round, or None

An update's tensors are views of its memory-mapped blob file where its codec allows
(binary codecs), arrays parsed in memory (plain JSON), or lazy tensors rebuilt a slice
at a time (``sparse`` updates, see :class:`~fma_connect.server.mean.LazyTensor`): an
aggregation that keeps an update must keep it as cheaply, and read it with
:func:`~fma_connect.server.mean.part`. Aggregators that need every update at each
coordinate build on :class:`~fma_connect.server.aggregators.held.HeldUpdates`, which
holds them as views of files and reads them a slice of every update at a time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np

from ...codecs.base import Tensors
from ..mean import Update

__all__ = [
    "Aggregation",
    "Aggregator",
    "AggregatorArgsError",
    "Contribution",
    "Number",
    "Planned",
    "RoundContext",
    "check_numbers",
    "no_args",
]

#: The name, shape and dtype of one tensor of a round's result.
Planned = tuple[str, tuple[int, ...], np.dtype[Any]]


class AggregatorArgsError(ValueError):
    """A model's ``aggregator_args`` do not suit its aggregator (the server answers 400).

    The message says what the aggregator takes and what arrived.
    """


class Contribution(NamedTuple):
    """One update of a round, as the round hands it to :meth:`Aggregation.add`.

    Attributes:
        tensors: Its tensors, matched to the round's by name (plain JSON: by position).
        num_examples: What its client said it trained on (None: not given).
        client: Its client's UUID.
        typed: Whether its dtypes are the sender's (False for plain JSON, whose dtypes
            are read from the numbers; see :mod:`~fma_connect.server.mean`).
    """

    tensors: Update
    num_examples: int | None = None
    client: str = ""
    typed: bool = True

    @property
    def weight(self) -> float:
        """Its weight in a weighted aggregate: ``num_examples``, 1 when not given."""
        return float(self.num_examples or 1)


def _nothing() -> Tensors | None:
    return None


@dataclass(frozen=True)
class RoundContext:
    """What a round tells an aggregator when it starts.

    Attributes:
        model_id: The model (0 outside a server).
        args: The model's ``aggregator_args`` as :meth:`Aggregator.check_args` returned
            them (defaults filled in).
        current: Loads the model its clients trained from: its latest aggregate, else its
            initial model; None when it has neither (its first round without an initial
            model). Views of files where the codec allows.
        state: Loads what this aggregator's :meth:`Aggregation.state` kept after the
            model's previous round (None: nothing kept, or another aggregator kept it).
    """

    model_id: int = 0
    args: Mapping[str, Any] = field(default_factory=dict)
    current: Callable[[], Tensors | None] = _nothing
    state: Callable[[], Tensors | None] = _nothing


class Aggregation(Protocol):
    """One round of an aggregator: updates in, one result out."""

    def add(self, update: Contribution) -> str | None:
        """Take an update; return why it is refused (the round then marks it INVALID and
        the result is as if it had never been added), or None.

        Refuse, with a reason a client can act on, an update whose structure differs
        from the first accepted one's, that holds NaN or infinity, or whose dtypes the
        aggregator cannot combine. Do not change the update's arrays.
        """
        ...

    def planned(self) -> list[Planned]:
        """The name, shape and dtype of each tensor :meth:`result` will give.

        Raises:
            ValueError: no update was accepted.
        """
        ...

    def result(self, out: Sequence[np.ndarray] | None = None) -> Tensors:
        """The round's aggregate, in the shapes and dtypes of :meth:`planned`.

        Args:
            out: Writable C-contiguous arrays, one per planned tensor, to compute the
                result into (views of the file it is stored in); a tensor that does not
                fit its planned dtype may come back as a new float64 array instead.
        """
        ...

    def state(self) -> Tensors | None:
        """Tensors to keep for the model's next round (after :meth:`result`); None: keep
        nothing new (the previous state, if any, stays)."""
        ...


@runtime_checkable
class Aggregator(Protocol):
    """An aggregation method, registered under :attr:`name`.

    Attributes:
        name: What a model's ``aggregator`` field holds (lowercase, e.g. ``median``).
        summary: One line for listings and messages.
        weighted: Whether updates count by their ``num_examples``.
        memory: What a round needs beyond its result, for the docs and operators.
    """

    @property
    def name(self) -> str: ...

    @property
    def summary(self) -> str: ...

    @property
    def weighted(self) -> bool: ...

    @property
    def memory(self) -> str: ...

    def check_args(self, args: Any) -> dict[str, Any]:
        """Validate a model's ``aggregator_args`` (None: not given).

        Returns:
            The arguments with their defaults, as :class:`RoundContext` passes them.

        Raises:
            AggregatorArgsError: they do not suit this aggregator; the message says what
                it takes and what arrived.
        """
        ...

    def start(self, context: RoundContext) -> Aggregation:
        """Begin a round."""
        ...


def no_args(name: str, args: Any) -> dict[str, Any]:
    """The ``check_args`` of an aggregator that takes no arguments.

    Raises:
        AggregatorArgsError: ``args`` is anything but None, ``{}`` or ``[]``.
    """
    if args is None or args == {} or args == []:
        return {}
    raise AggregatorArgsError(
        f"{name} takes no arguments, got {_shown(args)}: drop aggregator_args."
    )


@dataclass(frozen=True)
class Number:
    """A numeric argument: its default and the open or closed range it must lie in.

    Attributes:
        default: Its value when not given.
        low: The least value (None: no bound).
        high: The greatest value (None: no bound).
        low_open: Whether ``low`` itself is excluded.
        high_open: Whether ``high`` itself is excluded.
        meaning: A few words for messages.
    """

    default: float
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    meaning: str = ""

    def describe(self) -> str:
        """The range in words, e.g. ``a number greater than 0 and less than 1``."""
        parts = []
        if self.low is not None:
            parts.append(f"{'greater than' if self.low_open else 'at least'} {self.low:g}")
        if self.high is not None:
            parts.append(f"{'less than' if self.high_open else 'at most'} {self.high:g}")
        return "a number" + (" " + " and ".join(parts) if parts else "")

    def fits(self, value: float) -> bool:
        """Whether ``value`` lies in the range."""
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (
            self.high is not None and (value >= self.high if self.high_open else value > self.high)
        )


def check_numbers(name: str, args: Any, numbers: Mapping[str, Number]) -> dict[str, float]:
    """The ``check_args`` of an aggregator whose arguments are named numbers.

    Args:
        name: The aggregator, for messages.
        args: ``aggregator_args`` as sent: None, or an object of some of ``numbers``.
        numbers: What each argument may be.

    Returns:
        Every argument, the defaults for those not given.

    Raises:
        AggregatorArgsError: ``args`` is not an object, names an unknown argument, or
            holds a value that is not a number in its range.
    """
    takes = ", ".join(
        f"{key} ({spec.meaning + ', ' if spec.meaning else ''}{spec.describe()}, "
        f"default {spec.default:g})"
        for key, spec in numbers.items()
    )
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise AggregatorArgsError(
            f"{name} takes an object of named arguments: {takes}; got {_shown(args)}."
        )
    unknown = sorted(set(args) - set(numbers))
    if unknown:
        raise AggregatorArgsError(
            f"{name} takes no argument {', '.join(map(repr, unknown))}; it takes {takes}."
        )
    checked: dict[str, float] = {}
    for key, spec in numbers.items():
        value = args.get(key, spec.default)
        if type(value) not in (int, float) or not spec.fits(float(value)):
            raise AggregatorArgsError(
                f"{name}'s {key} must be {spec.describe()}, got {_shown(value)}."
            )
        checked[key] = float(value)
    return checked


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
