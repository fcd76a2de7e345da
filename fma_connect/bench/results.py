"""The figures of one benchmark run, and how a case that gave none is described."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Figures", "Results", "label", "problem"]

Figures = dict[str, Any]


@dataclass
class Results:
    """Every figure of a run, keyed by (size in bytes, case name).

    ``smoke`` marks a ``--quick`` run: a tiny payload, in process, one timed run. Its
    figures show that every path works, but they cannot judge a speed or memory target.
    """

    sizes: list[int]
    codec: dict[tuple[int, str], Figures] = field(default_factory=dict)
    baseline: dict[tuple[int, str], Figures] = field(default_factory=dict)
    transfer: dict[tuple[int, str], Figures] = field(default_factory=dict)
    roundtrip: dict[tuple[int, str], Figures] = field(default_factory=dict)
    smoke: bool = False


def label(size: int) -> str:
    """A short label for a size in bytes."""
    for unit, factor in (("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if size >= factor:
            value = size / factor
            return f"{value:g} {unit}" if value == int(value) else f"{value:.3g} {unit}"
    return f"{size} B"


def problem(figures: Figures | None) -> str | None:
    """Why a case has no figures (not run, skipped, refused, failed), or None when it has."""
    if figures is None:
        return "not run"
    if "skipped" in figures:
        return "skipped: " + str(figures["skipped"])
    if "refused" in figures:
        text = str(figures["refused"])
        return "refused: " + (text if len(text) < 90 else text[:87] + "...")
    if "error" in figures:
        return "error: " + str(figures["error"])[:120]
    return None
