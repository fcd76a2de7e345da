"""Fixtures that run the stock FMA Django service (in its own virtualenv) on 127.0.0.1."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from stock_server import StockServer, ensure_stock_env, run_stock_server

# Where the stock service's virtualenv lives; built on first use (~25 s), reused after.
STOCK_VENV = Path(os.environ.get("FMA_STOCK_VENV", Path(__file__).parents[2] / ".tox-stock"))


@pytest.fixture(scope="module")
def stock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StockServer]:
    """A stock service on an ephemeral loopback port, with a fresh database."""
    venv = ensure_stock_env(str(STOCK_VENV))
    with run_stock_server(venv, tmp_path_factory.mktemp("stock")) as server:
        yield server
