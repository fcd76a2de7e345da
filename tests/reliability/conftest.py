"""Reliability tests: the figures they record, printed at the end of the run.

Every test here that exercises something countable (fuzz inputs per codec, updates
under load, resends, crashes survived) records it with the ``figures`` fixture. The
totals are printed as a "reliability figures" section after the run, and written as
JSON to ``$FMA_RELIABILITY_FIGURES`` when that is set; docs/RELIABILITY.md quotes them.
"""

from __future__ import annotations

import json
import os
import time
import types
from pathlib import Path
from typing import Any

import pytest
import urllib3.util.retry
from reliability_figures import Figures

import fma_connect._transport as transport

FIGURES_ENV = "FMA_RELIABILITY_FIGURES"


_FIGURES = Figures()


@pytest.fixture(scope="session")
def figures() -> Figures:
    """The run's figures (one object for the whole session)."""
    return _FIGURES


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Every retry sleep of the client (urllib3's and the resend loop's), not slept."""
    recorded: list[float] = []
    fake = types.SimpleNamespace(sleep=recorded.append, time=time.time, monotonic=time.monotonic)
    monkeypatch.setattr(urllib3.util.retry, "time", fake)
    monkeypatch.setattr(transport, "time", fake)
    return recorded


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print the recorded figures, and write them as JSON if asked to."""
    if not _FIGURES.data:
        return
    terminalreporter.section("reliability figures")
    for topic in sorted(_FIGURES.data):
        for name, value in sorted(_FIGURES.data[topic].items()):
            terminalreporter.write_line(f"{topic}: {name} = {value}")
    target = os.environ.get(FIGURES_ENV)
    if target:
        Path(target).write_text(json.dumps(_FIGURES.data, indent=2, sort_keys=True) + "\n")
