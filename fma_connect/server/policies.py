"""When an automatic round runs: a model's requirement, and its round policy.

A model's requirement (``all_clients``, ``require_x_updates``, none) says which updates
make a round; its round policy, four optional fields, keeps a federation moving when
clients are slow or gone:

* ``round_deadline``: seconds after a round's first update. Once they have passed, the
  round runs with the updates that arrived, if ``round_quorum`` clients sent them;
  with fewer, the round waits for the quorum and runs as soon as it is reached.
* ``round_quorum``: the fewest clients whose updates a deadline round takes (default 1).
* ``min_clients``: no automatic round runs while fewer clients are registered.
* ``drop_after_missed``: ``all_clients`` does not wait for a client that missed this many
  rounds in a row (rounds of the model that ran without an update of it since its
  previous one, or since it registered). It counts again once it sends an update.

Admin rounds run whatever the policy says. The functions here decide from plain values
(times in seconds since the epoch), so the rounds' scheduler can be driven by any clock.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from .aggregation import requirement_met

__all__ = ["POLICY_FIELDS", "Decision", "RoundPolicy", "check_policy", "decide", "epoch"]

#: The model fields of a round policy, and what each takes.
POLICY_FIELDS: dict[str, str] = {
    "round_deadline": "seconds > 0 (a number) or null",
    "round_quorum": "an integer from 1 to 2**63-1 or null",
    "min_clients": "an integer from 1 to 2**63-1 or null",
    "drop_after_missed": "an integer from 1 to 2**63-1 or null",
}


@dataclass(frozen=True)
class RoundPolicy:
    """A model's round policy (see the module notes); None fields are off."""

    round_deadline: float | None = None
    round_quorum: int | None = None
    min_clients: int | None = None
    drop_after_missed: int | None = None

    @classmethod
    def of(cls, model: Mapping[str, Any]) -> RoundPolicy:
        """The policy of a model row (fields it lacks are off)."""
        return cls(*(model.get(name) for name in POLICY_FIELDS))


class Decision(NamedTuple):
    """Whether an automatic round runs now; if not, when to ask again.

    Attributes:
        run: Run the round now.
        wake_at: When the answer may change without a new update (a deadline), or None.
        why: Why not, for the log ('' when it runs).
    """

    run: bool
    wake_at: float | None = None
    why: str = ""


def check_policy(name: str, value: Any) -> str | None:
    """Why ``value`` does not suit the policy field ``name``, or None when it does."""
    if value is None:
        return None
    if name == "round_deadline":
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if number and 0 < value < float("inf"):
            return None
    elif type(value) is int and 1 <= value < 2**63:  # a database integer
        return None
    return f"{name} takes {POLICY_FIELDS[name]}, got {value!r}."


def decide(
    requirement: str | None,
    requirement_args: Any,
    policy: RoundPolicy,
    clients: Collection[str],
    pending: Sequence[tuple[str, float]],
    missed: Mapping[str, int],
    now: float,
) -> Decision:
    """Whether an automatic round runs now.

    Args:
        requirement: The model's requirement.
        requirement_args: Its arguments.
        policy: The model's round policy.
        clients: The registered clients.
        pending: ``(client, time it arrived)`` of each PENDING update of a registered client.
        missed: Rounds in a row each registered client missed (absent: none).
        now: The time now.
    """
    if not pending:
        return Decision(False, why="no pending update")
    if policy.min_clients is not None and len(clients) < policy.min_clients:
        return Decision(
            False, why=f"{len(clients)} of the {policy.min_clients} clients needed are registered"
        )
    senders = [client for client, _ in pending]
    waited = clients
    if policy.drop_after_missed is not None:
        sent = set(senders)  # a client that sent an update is waited for again
        waited = [c for c in clients if c in sent or missed.get(c, 0) < policy.drop_after_missed]
    if requirement_met(requirement, requirement_args, waited, senders):
        return Decision(True)
    if policy.round_deadline is None:
        return Decision(False, why=f"the requirement {requirement} is not met")
    due = min(arrived for _, arrived in pending) + policy.round_deadline
    if now < due:
        return Decision(False, due, "the round's deadline has not passed")
    quorum = policy.round_quorum or 1
    if len(set(senders)) >= quorum:
        return Decision(True)
    return Decision(
        False, why=f"past the deadline with {len(set(senders))} of {quorum} clients (quorum)"
    )


def epoch(timestamp: str) -> float:
    """Seconds since the epoch of a stored timestamp (``2026-12-01T18:00:00.000000Z``)."""
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()
