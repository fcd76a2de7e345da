"""Aggregation requirements of the reference server: when a round may run.

Requirements: ``all_clients`` (every registered client sent an update) and
``require_x_updates`` (``requirement_args: [x]``); none means one update is enough.

The aggregators (how a round combines its updates: the stock means, FedAvg, FedAdam,
FedYogi, median, trimmed mean and plugins') are in :mod:`.aggregators`, registered
through the ``fma_connect_register_aggregators`` hook; the arithmetic of the mean is in
:mod:`.mean`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any

__all__ = [
    "REQUIREMENTS",
    "check_requirement_args",
    "requirement_met",
]


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
