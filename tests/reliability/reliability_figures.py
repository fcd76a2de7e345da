"""The figures the reliability tests record (see conftest.py)."""

from __future__ import annotations

from typing import Any


class Figures:
    """Named counters and facts, grouped by topic (``fuzz``, ``load``, ``faults``...)."""

    def __init__(self) -> None:
        self.data: dict[str, dict[str, Any]] = {}

    def add(self, topic: str, name: str, count: int) -> None:
        """Add ``count`` to the counter ``topic/name``."""
        group = self.data.setdefault(topic, {})
        group[name] = int(group.get(name, 0)) + count

    def set(self, topic: str, name: str, value: Any) -> None:
        """Record a fact (the last value wins)."""
        self.data.setdefault(topic, {})[name] = value
