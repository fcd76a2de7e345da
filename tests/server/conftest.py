"""Fixtures: a real reference server on 127.0.0.1 (in a thread) and an admin client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fma_connect.admin import AdminClient
from fma_connect.server.testing import RunningServer, running_server


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def server(data_dir: Path) -> Iterator[RunningServer]:
    with running_server(data_dir) as running:
        yield running


@pytest.fixture
def admin(server: RunningServer) -> Iterator[AdminClient]:
    with AdminClient(server.url, server.admin_token, retries=0) as client:
        yield client
