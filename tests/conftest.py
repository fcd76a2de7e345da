"""Shared test setup: a hypothesis profile, fresh codec registries, a real reference server.

Every test fails (at teardown) when a reference server running in the test process
logged an error during it: an unhandled exception, or a 5xx answer. Bad input must get
a 4xx. A test that provokes a server error on purpose says so with
``@pytest.mark.server_errors_expected("why")``.
"""

from __future__ import annotations

import logging
import os
import threading
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

#: Where an in-process server reports failures: the app (500s, failed rounds) and uvicorn
#: (exceptions escaping the app, protocol errors).
SERVER_LOGGERS = ("fma_connect.server", "uvicorn.error")
EXPECTED_MARKER = "server_errors_expected"


class ServerErrors:
    """The ERROR records of the server loggers since the current test started.

    It watches as a logging *filter* on each logger, not as a handler: every uvicorn
    server a test starts reconfigures uvicorn's loggers (``logging.config.dictConfig``),
    which removes their handlers but keeps their filters.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: list[logging.LogRecord] = []

    def __call__(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            with self._lock:
                self._records.append(record)
        return True  # watch only: the record is logged as usual

    def take(self) -> list[logging.LogRecord]:
        """Return the records so far and forget them."""
        with self._lock:
            records, self._records = self._records, []
        return records


_SERVER_ERRORS = ServerErrors()


def pytest_configure(config: pytest.Config) -> None:
    """Register the opt-out marker and start watching the server loggers."""
    config.addinivalue_line(
        "markers",
        f"{EXPECTED_MARKER}(reason): the test provokes a server error (a 5xx answer or an "
        "unhandled exception in the server log) on purpose, so the log check lets it pass",
    )
    for name in SERVER_LOGGERS:
        logging.getLogger(name).addFilter(_SERVER_ERRORS)


@pytest.fixture(autouse=True)
def _no_server_errors(request: pytest.FixtureRequest) -> Iterator[ServerErrors]:
    """Fail the test at teardown if a server in this process logged an error during it."""
    _SERVER_ERRORS.take()  # what earlier tests' lingering threads logged is not this test's
    yield _SERVER_ERRORS
    records = _SERVER_ERRORS.take()
    if records and request.node.get_closest_marker(EXPECTED_MARKER) is None:
        formatter = logging.Formatter("%(name)s %(levelname)s: %(message)s")
        logged = "\n".join(formatter.format(record) for record in records)
        pytest.fail(
            f"the test server logged {len(records)} error(s) during this test (a 5xx answer "
            "or an unhandled exception; bad input must get a 4xx). If the test provokes "
            f"them on purpose, mark it @pytest.mark.{EXPECTED_MARKER}(reason).\n{logged}",
            pytrace=False,
        )


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
