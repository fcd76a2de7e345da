"""Shared test setup: a hypothesis profile, fresh codec registries, a real reference server."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hypothesis import HealthCheck, settings

from fma_connect import CodecRegistry, build_codec_registry, plugin_manager

if TYPE_CHECKING:  # the server extra is not installed in every tox env
    from fma_connect.admin import AdminClient
    from fma_connect.server.testing import RunningServer

# CI runs are reproducible: derandomized examples, no example database, no deadline.
settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=100,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", deadline=None, max_examples=100)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


@pytest.fixture
def registry() -> CodecRegistry:
    """A registry of the built-in codecs only, built fresh for the test."""
    return build_codec_registry(plugin_manager(autoload=False))


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A fresh data directory for a reference server."""
    return tmp_path / "data"


@pytest.fixture
def server(data_dir: Path) -> Iterator[RunningServer]:
    """A reference server in a thread on 127.0.0.1, over a fresh data directory."""
    from fma_connect.server.testing import running_server

    with running_server(data_dir) as running:
        yield running


@pytest.fixture
def admin(server: RunningServer) -> Iterator[AdminClient]:
    """An admin client of ``server`` that does not retry (tests see every answer)."""
    from fma_connect.admin import AdminClient

    with AdminClient(server.url, server.admin_token, retries=0) as client:
        yield client
