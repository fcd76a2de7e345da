"""Reliability tests: the figures they record, printed at the end of the run.

Every test here that exercises something countable (fuzz inputs per codec, updates
under load, resends, crashes survived) records it with the ``figures`` fixture. The
totals are printed as a "reliability figures" section after the run, and written as
JSON to ``$FMA_RELIABILITY_FIGURES`` when that is set; docs/RELIABILITY.md quotes them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from reliability_figures import Figures

from fma_connect.admin import AdminClient
from fma_connect.server.testing import RunningServer, running_server

FIGURES_ENV = "FMA_RELIABILITY_FIGURES"


_FIGURES = Figures()


@pytest.fixture(scope="session")
def figures() -> Figures:
    """The run's figures (one object for the whole session)."""
    return _FIGURES


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


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def server(data_dir: Path) -> Iterator[RunningServer]:
    """A reference server in a thread on 127.0.0.1, over a fresh data directory."""
    with running_server(data_dir) as running:
        yield running


@pytest.fixture
def admin(server: RunningServer) -> Iterator[AdminClient]:
    with AdminClient(server.url, server.admin_token, retries=0) as client:
        yield client
