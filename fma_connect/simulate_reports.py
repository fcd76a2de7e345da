"""What ``fma-connect simulate`` measures and prints: each round's figures, the run's
outcome, and the lines a round prints as (a part of :mod:`fma_connect.simulate`, which
re-exports :class:`RoundReport` and :class:`Outcome`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .simulate_options import SimulateOptions

__all__ = ["CALLS", "Outcome", "RoundReport", "format_round"]

#: The calls whose latency is reported, in the order a client makes them.
CALLS = ("register", "check_for_latest_model", "send_update", "wait_for_new_model")


@dataclass
class RoundReport:
    """One round's figures (round 0: registering and fetching the initial model)."""

    number: int
    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    updates: int = 0
    updates_seconds: float = 0.0
    bytes_up: int = 0
    bytes_down: int = 0
    server_rss: int | None = None

    @property
    def updates_per_second(self) -> float:
        """Updates stored per second, from the round's start to its last update."""
        return self.updates / self.updates_seconds if self.updates_seconds else 0.0

    def percentile(self, call: str, q: float) -> float | None:
        """The ``q``-th percentile latency of ``call`` in seconds (None: no calls)."""
        values = self.latencies.get(call)
        return float(np.percentile(values, q)) if values else None


@dataclass
class Outcome:
    """What a simulation did: its rounds and its end checks."""

    options: SimulateOptions
    rounds: list[RoundReport]
    aggregates: list[int]
    stored_once: bool
    all_received: bool
    detail: list[str]

    @property
    def errors(self) -> int:
        """Failed calls, over all rounds."""
        return sum(sum(r.errors.values()) for r in self.rounds)

    @property
    def ok(self) -> bool:
        """No errors, every update stored once, every client got every aggregate."""
        return self.errors == 0 and self.stored_once and self.all_received


def format_round(report: RoundReport, options: SimulateOptions) -> str:
    """A round's figures as the lines ``simulate`` prints."""
    if report.number == 0:
        title = "setup (register, fetch the initial model)"
    else:
        title = f"round {report.number}/{options.rounds}"
    rss = "n/a" if report.server_rss is None else _size(report.server_rss)
    errors = sum(report.errors.values())
    lines = [f"{title}: {report.seconds:.2f} s"]
    if report.number:
        lines[0] += f", {report.updates} updates, {report.updates_per_second:.1f} updates/s"
    lines[0] += (
        f", up {_size(report.bytes_up)}, down {_size(report.bytes_down)}, "
        f"errors {errors}, server RSS {rss}"
    )
    lines.append(f"  {'call':<24}{'n':>7}{'p50 ms':>11}{'p99 ms':>11}")
    for call in CALLS:
        if call in report.latencies:
            p50, p99 = report.percentile(call, 50), report.percentile(call, 99)
            assert p50 is not None and p99 is not None
            lines.append(
                f"  {call:<24}{len(report.latencies[call]):>7}{p50 * 1e3:>11.1f}{p99 * 1e3:>11.1f}"
            )
    lines.extend(f"  error {name}: {count}" for name, count in sorted(report.errors.items()))
    return "\n".join(lines)


def _size(nbytes: int) -> str:
    """Bytes for people: 81.9 kB, 400.0 MB, 1.1 GB."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} B"
