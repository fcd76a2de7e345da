"""Aggregators and aggregation requirements of the reference server.

Aggregators (the stock names plus a weighted FedAvg):

* ``avg_values_if_data`` - element-wise unweighted mean of the round's updates.
* ``average_layers`` - unweighted mean per layer. On tensors this is the same mean as
  ``avg_values_if_data``; both names exist so that stock model definitions work. Unlike
  the stock service, layers of different shapes are fine for both.
* ``fed_avg`` - the mean weighted by each update's ``num_examples`` (default 1).

Requirements: ``all_clients`` (every registered client sent an update) and
``require_x_updates`` (``requirement_args: [x]``); none means one update is enough.

The arithmetic of the mean is in :mod:`.mean`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any

__all__ = [
    "AGGREGATORS",
    "REQUIREMENTS",
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
