"""Shared test setup: a hypothesis profile, fresh codec registries, a real reference server.

Every test fails (at teardown) when a reference server running in the test process
logged an error during it: an unhandled exception, or a 5xx answer. Bad input must get
a 4xx. A test that provokes a server error on purpose says so with
``@pytest.mark.server_errors_expected("why")``.

Every test of the server suite (``tests/server/``) using ``data_dir`` (so ``server`` and
``admin``) runs twice, once per storage pairing, named by its database:

- ``[sqlite]``: the data directory's SQLite file and its ``blobs/`` directory (what one
  server runs on);
- ``[postgresql]``: a fresh database of a throwaway cluster started once per session
  (see :mod:`fma_connect.server.pgcluster`) and a fresh bucket on a moto S3 server
  started once per session on loopback (see :mod:`s3_support`): what replicas run on.
  ``FMA_CONNECT_DATABASE``, ``FMA_CONNECT_BLOBS`` and ``FMA_CONNECT_S3_ENDPOINT_URL``
  name them during the test, so every server the test starts, in a thread or a child
  process, uses them.

A test that looks at or changes the local blob directory (its files, their syncs, the
disk under them) is marked ``@pytest.mark.local_blobs("why")``, next to it (or a
module's ``pytestmark``): its ``[postgresql]`` run keeps the blobs in the data
directory, so PostgreSQL still covers it. The ``blob_store`` fixture says which store a
test got (``"local"`` or ``"s3"``); ``stored_blobs`` lists (or loses) what the test's
servers stored in it, for a test that checks that on both stores. If PostgreSQL (``apt-get
install postgresql``) or moto (the test extra) is not installed, the ``[postgresql]``
runs error: they are never skipped.

A test about SQLite itself (it opens the file) is listed in :data:`SQLITE_ONLY` and runs
``[sqlite]`` alone, as do the tests outside the server suite (reliability, plugins: they
run servers of their own, and what they check does not depend on the storage;
tests/reliability/test_replicas.py runs replicas on PostgreSQL). The object-store tests
(``test_object_store*.py``, ``test_s3_*.py``) use :mod:`s3_support`'s fixtures directly.
"""

from __future__ import annotations

import importlib.util
import itertools
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hypothesis import HealthCheck, settings

from fma_connect import CodecRegistry, build_codec_registry, plugin_manager
from fma_connect.settings import BLOBS_ENV, DATABASE_ENV, S3_ENDPOINT_URL_ENV

if TYPE_CHECKING:  # the server extra is not installed in every tox env
    from s3_support import S3Bucket, StoredBlobs

    from fma_connect.admin import AdminClient
    from fma_connect.server.pgcluster import Cluster
    from fma_connect.server.testing import RunningServer

#: The moto S3 server and bucket fixtures, for the whole run (tests/server/s3_support.py,
#: importable by name through the ``pythonpath`` of pyproject.toml's pytest settings). It
#: imports boto3 and moto only when a test uses them, so every tox env collects.
pytest_plugins = ["s3_support"]

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
    """Register the opt-out marker, start watching the server loggers, forget any database."""
    config.addinivalue_line(
        "markers",
        f"{EXPECTED_MARKER}(reason): the test provokes a server error (a 5xx answer or an "
        "unhandled exception in the server log) on purpose, so the log check lets it pass",
    )
    for name in SERVER_LOGGERS:
        logging.getLogger(name).addFilter(_SERVER_ERRORS)
    # Each test picks its database and blob store (``database``, ``blob_store``): not the
    # developer's.
    for name in (DATABASE_ENV, BLOBS_ENV, S3_ENDPOINT_URL_ENV):
        os.environ.pop(name, None)


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


#: The database backends the server tests run on.
BACKENDS = ("sqlite", "postgresql")
#: The blob store each backend is paired with (a ``local_blobs`` test keeps "local").
BLOB_STORES = {"sqlite": "local", "postgresql": "s3"}
LOCAL_BLOBS_MARKER = "local_blobs"
#: Tests (``module::name``) that read or change the SQLite file, or test what only a
#: server with its own database does (the data directory's lock): SQLite alone.
SQLITE_ONLY = frozenset(
    {
        "test_server_downstream.py::"
        "test_a_database_from_before_sparse_aggregates_is_upgraded_in_place",
        "test_server_downstream.py::test_a_json_initial_model_of_an_older_server_is_still_a_base",
        "test_sparse_round_memory.py::"
        "test_the_initial_model_is_stored_in_msgpack_where_json_answers_stay_the_same",
        "test_sparse_round_memory.py::test_the_initial_model_keeps_its_names_in_msgpack",
        "test_server_hostile.py::test_a_remote_ref_is_refused_and_never_fetched",
    }
)
_DATABASES = itertools.count(1)


_SERVER_SUITE = Path(__file__).parent / "server"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run every server-suite test that uses ``backend`` (through ``data_dir``) on each
    backend; other tests keep the ``backend`` fixture's SQLite (and their names)."""
    if "backend" not in metafunc.fixturenames:
        return
    key = f"{metafunc.definition.path.name}::{metafunc.definition.originalname}"
    if metafunc.definition.path.is_relative_to(_SERVER_SUITE) and key not in SQLITE_ONLY:
        metafunc.parametrize("backend", list(BACKENDS))


@pytest.fixture
def backend() -> str:
    """The database backend of the test (parametrized in the server suite, see above)."""
    return "sqlite"


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[Cluster]:
    """A throwaway PostgreSQL cluster for the session (made on first use, then removed)."""
    from fma_connect.server.pgcluster import throwaway_cluster

    with throwaway_cluster() as cluster:
        yield cluster


@pytest.fixture
def database(
    backend: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str | None]:
    """The test's database URL (None: SQLite in the data directory), set as
    ``FMA_CONNECT_DATABASE`` for every server the test starts; dropped after it."""
    if backend == "sqlite":
        monkeypatch.delenv(DATABASE_ENV, raising=False)
        yield None
        return
    cluster: Cluster = request.getfixturevalue("postgres_cluster")
    name = f"test_{os.getpid()}_{next(_DATABASES)}"
    url = cluster.create_database(name)
    monkeypatch.setenv(DATABASE_ENV, url)
    yield url
    cluster.drop_database(name)


@pytest.fixture
def blob_store(
    backend: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> str:
    """Where the test's servers keep their blobs: ``"local"`` (the data directory's
    ``blobs/``) or ``"s3"`` (a fresh bucket, set as ``FMA_CONNECT_BLOBS`` and
    ``FMA_CONNECT_S3_ENDPOINT_URL`` for every server the test starts; see above)."""
    if BLOB_STORES[backend] == "local" or request.node.get_closest_marker(LOCAL_BLOBS_MARKER):
        monkeypatch.delenv(BLOBS_ENV, raising=False)
        monkeypatch.delenv(S3_ENDPOINT_URL_ENV, raising=False)
        return "local"
    if importlib.util.find_spec("moto") is None:  # an error here, not s3_support's skip
        pytest.fail("the [postgresql] runs keep blobs in moto: install the test extra")
    request.getfixturevalue("s3_blobs_env")
    return "s3"


@pytest.fixture
def data_dir(tmp_path: Path, database: str | None, blob_store: str) -> Path:
    """A fresh data directory for a reference server (with a fresh database and blob
    store, see ``database`` and ``blob_store``)."""
    return tmp_path / "data"


@pytest.fixture
def stored_blobs(blob_store: str, data_dir: Path, request: pytest.FixtureRequest) -> StoredBlobs:
    """The blobs of the test's servers, in the directory or the bucket ``blob_store`` gave
    them (see :class:`s3_support.StoredBlobs`)."""
    from s3_support import StoredBlobs

    if blob_store == "s3":
        bucket: S3Bucket = request.getfixturevalue("s3_bucket")
        return StoredBlobs(data_dir / "blobs", bucket, request.getfixturevalue("s3_blobs_url"))
    return StoredBlobs(data_dir / "blobs", None, None)


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
