"""The database's schema versions: an older database upgraded in place, a newer one refused.

A SQLite file made by fma-connect 0.1 (the releases before schema versioning: no
``schema_version`` table, the tables below) is upgraded in place on start, its data kept;
the same for a PostgreSQL database left at an earlier version. A database whose version
is newer than the code refuses to start, saying why, on both backends.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from server_helpers import make_tree, reference_mean

from fma_connect import WebClient
from fma_connect.admin import AdminClient
from fma_connect.server import create_app
from fma_connect.server.database import DatabaseError, open_database
from fma_connect.server.migrations import LATEST, migrate
from fma_connect.server.testing import running_server

#: The tables of fma-connect 0.1.0's store.py (commit 33c19f6), as it created them.
SCHEMA_0_1 = """
CREATE TABLE IF NOT EXISTS users (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    username TEXT NOT NULL UNIQUE,
    token TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS clients (uuid TEXT PRIMARY KEY, created_on TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS models (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    developer INTEGER NOT NULL REFERENCES users(id),
    aggregator TEXT NOT NULL,
    allow_aggregation INTEGER NOT NULL,
    requirement TEXT,
    requirement_args TEXT,
    update_schema TEXT,
    client_agg_results_schema TEXT,
    furthest_base_agg INTEGER,
    aggregate_fraction REAL,
    aggregate_values TEXT,
    residual_blob INTEGER,
    current_artifact INTEGER,
    created_on TEXT NOT NULL,
    last_modified TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS model_clients (
    federated_model INTEGER NOT NULL REFERENCES models(id) ON DELETE CASCADE,
    client TEXT NOT NULL REFERENCES clients(uuid),
    PRIMARY KEY (federated_model, client)
);
CREATE TABLE IF NOT EXISTS blobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    federated_model INTEGER NOT NULL REFERENCES models(id) ON DELETE CASCADE,
    codec TEXT NOT NULL,
    filename TEXT NOT NULL UNIQUE,
    nbytes INTEGER NOT NULL,
    tensor_names TEXT
);
CREATE TABLE IF NOT EXISTS updates (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    federated_model INTEGER NOT NULL REFERENCES models(id) ON DELETE CASCADE,
    client TEXT NOT NULL REFERENCES clients(uuid),
    base_aggregate INTEGER,
    num_examples INTEGER,
    status INTEGER NOT NULL,
    status_reason TEXT,
    blob INTEGER NOT NULL REFERENCES blobs(id),
    idempotency_key TEXT,
    applied_aggregate INTEGER,
    created_on TEXT NOT NULL,
    UNIQUE (client, idempotency_key)
);
CREATE INDEX IF NOT EXISTS updates_model_status ON updates (federated_model, status);
CREATE TABLE IF NOT EXISTS aggregates (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    federated_model INTEGER NOT NULL REFERENCES models(id) ON DELETE CASCADE,
    blob INTEGER NOT NULL REFERENCES blobs(id),
    parent INTEGER,
    step_blob INTEGER,
    aggregator TEXT NOT NULL,
    validation_score REAL,
    created_on TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS artifacts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    federated_model INTEGER NOT NULL REFERENCES models(id) ON DELETE CASCADE,
    blob INTEGER NOT NULL REFERENCES blobs(id),
    aggregate INTEGER,
    version TEXT NOT NULL,
    created_on TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS uploads (
    id TEXT PRIMARY KEY,
    federated_model INTEGER NOT NULL REFERENCES models(id) ON DELETE CASCADE,
    client TEXT NOT NULL REFERENCES clients(uuid),
    fields TEXT NOT NULL,
    codec TEXT NOT NULL,
    size INTEGER NOT NULL,
    chunk_size INTEGER NOT NULL,
    chunks TEXT NOT NULL,
    manifest TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    update_id INTEGER,
    created_on TEXT NOT NULL,
    expires REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS uploads_client ON uploads (client, manifest);
CREATE TABLE IF NOT EXISTS upload_chunks (
    upload TEXT NOT NULL REFERENCES uploads(id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    boot TEXT,
    PRIMARY KEY (upload, idx)
);
CREATE TABLE IF NOT EXISTS chunk_index (
    federated_model INTEGER NOT NULL REFERENCES models(id) ON DELETE CASCADE,
    digest TEXT NOT NULL,
    blob INTEGER NOT NULL REFERENCES blobs(id) ON DELETE CASCADE,
    offset INTEGER NOT NULL,
    length INTEGER NOT NULL,
    PRIMARY KEY (federated_model, digest)
);
CREATE TABLE IF NOT EXISTS scores (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    aggregate INTEGER NOT NULL REFERENCES aggregates(id) ON DELETE CASCADE,
    client TEXT NOT NULL REFERENCES clients(uuid),
    validation_results TEXT NOT NULL,
    created_on TEXT NOT NULL,
    UNIQUE (aggregate, client)
);
"""
#: What later versions added to 0.1's tables (removed here to remake a 0.1 file).
_ADDED_TABLES = (
    "schema_version",
    "aggregator_states",
    "round_leases",
    "update_signatures",
    "request_nonces",
    "allowed_keys",
    "enrolment_tokens",
    "client_keys",
)
_ADDED_COLUMNS = (
    ("models", "aggregator_args"),
    ("uploads", "completing_until"),
    *(
        ("models", policy)
        for policy in ("round_deadline", "round_quorum", "min_clients", "drop_after_missed")
    ),
    ("models", "enrolment"),
    ("clients", "revoked_on"),
    ("model_clients", "admitted_key"),
    ("model_clients", "admitted_on"),
    ("aggregates", "inputs"),
    ("aggregates", "inputs_sha256"),
    ("aggregates", "blob_sha256"),
)


def _columns(path: Path) -> dict[str, list[str]]:
    """Table -> its columns, of a SQLite file."""
    with sqlite3.connect(path) as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {
            t: [r[1] for r in db.execute(f"PRAGMA table_info({t})")]
            for t in sorted(tables)
            if t != "sqlite_sequence"
        }


def _make_0_1(path: Path) -> None:
    """Turn the server's SQLite file into what fma-connect 0.1 made: its rows kept, the
    later tables and columns removed."""
    with sqlite3.connect(path) as db:
        for table in _ADDED_TABLES:
            db.execute(f"DROP TABLE {table}")
        for table, column in _ADDED_COLUMNS:
            db.execute(f"ALTER TABLE {table} DROP COLUMN {column}")


def _round(url: str, token: str) -> tuple[int, list[dict[str, np.ndarray]]]:
    """A model with two clients and one round; return its id and the clients' trees."""
    admin = AdminClient(url, token, retries=0)
    model_id = admin.create_model("old", requirement="require_x_updates", requirement_args=[2])[
        "id"
    ]
    trees = [make_tree(seed) for seed in (1, 2)]
    for tree in trees:
        client = WebClient(model_id, url=url, codec="msgpack", retries=0)
        client.register()
        client.send_update(tree)
    return model_id, trees


def test_a_sqlite_file_of_0_1_is_upgraded_in_place_with_its_data(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with running_server(data) as (url, token):
        model_id, trees = _round(url, token)
    database = data / "fma.sqlite3"
    _make_0_1(database)
    reference = tmp_path / "reference.sqlite3"
    with sqlite3.connect(reference) as db:
        db.executescript(SCHEMA_0_1)
    assert _columns(database) == _columns(reference)  # it is 0.1's file now

    with running_server(data) as (url, token):  # the same admin token: the stored one
        admin = AdminClient(url, token, retries=0)
        assert [m["id"] for m in admin.list_models()] == [model_id]
        updates = admin.list_updates(model_id)
        assert len(updates) == 2 and {u["status"] for u in updates} == {2}
        (aggregate,) = admin.list_aggregates(model_id)
        got = WebClient(model_id, url=url, retries=0).check_for_latest_model(like=trees[0])
        assert got is not None and got["aggregate"] == aggregate["id"]
        want = reference_mean(trees)
        for array, expected in zip(
            [got["values"]["dense"]["kernel"], got["values"]["dense"]["bias"]],
            want[:2],
            strict=True,
        ):
            np.testing.assert_array_equal(array, expected)
        # What the upgrade added works: a second round, and the new model fields.
        model_2, _ = _round(url, token)
        assert admin.get_model(model_2)["aggregator_args"] is None
        assert admin.get_model(model_2)["round_deadline"] is None
    with sqlite3.connect(database) as db:
        versions = [r[0] for r in db.execute("SELECT version FROM schema_version ORDER BY 1")]
    assert versions == list(range(1, LATEST + 1))


def test_a_database_at_an_earlier_version_is_upgraded(database: str | None, data_dir: Path) -> None:
    data_dir.mkdir()
    db = open_database(database, data_dir / "fma.sqlite3")
    try:
        assert migrate(db) == (0, LATEST)
        with db.transaction() as conn:  # as if only step 1 had been released
            conn.execute("DELETE FROM schema_version WHERE version > 1")
            conn.execute("DROP TABLE round_leases")
        assert migrate(db) == (1, LATEST)
        assert db.all("SELECT holder FROM round_leases") == []
        assert migrate(db) == (LATEST, LATEST)  # nothing left to do
    finally:
        db.close()


def test_a_database_newer_than_the_code_refuses_to_start(
    database: str | None, data_dir: Path
) -> None:
    with running_server(data_dir):
        pass
    db = open_database(database, data_dir / "fma.sqlite3")
    with db.transaction() as conn:
        conn.execute(
            "INSERT INTO schema_version (version, description, applied_on) VALUES (?, ?, ?)",
            (LATEST + 1, "from the future", "2030-01-01"),
        )
    db.close()
    with pytest.raises(DatabaseError, match=f"schema version {LATEST + 1}, newer than"):
        create_app(data_dir)
    served = subprocess.run(
        [sys.executable, "-m", "fma_connect", "serve", "--port", "0", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert served.returncode == 1
    assert f"schema version {LATEST + 1}, newer than this fma-connect" in served.stderr
    assert "Traceback" not in served.stderr
    # Nothing was changed: still the future's version, and the SQLite file is free again.
    db = open_database(database, data_dir / "fma.sqlite3")
    try:
        assert db.one("SELECT MAX(version) AS v FROM schema_version") == {"v": LATEST + 1}
    finally:
        db.close()


def test_the_admin_token_is_read_from_either_database(database: str | None, data_dir: Path) -> None:
    with running_server(data_dir) as (_, token):
        pass
    # FMA_CONNECT_DATABASE names the PostgreSQL database (see conftest), as --database would.
    shown = subprocess.run(
        [sys.executable, "-m", "fma_connect", "admin-token", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == token


def test_servers_starting_at_once_upgrade_a_new_database_once(
    database: str | None, data_dir: Path
) -> None:
    data_dir.mkdir()
    results: list[tuple[int, int]] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            db = open_database(database, data_dir / "fma.sqlite3")
            try:
                results.append(migrate(db))
            finally:
                db.close()
        except BaseException as exc:  # reported in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    # One of them found the database empty and upgraded it; the others found it done.
    assert sorted(results) == [(0, LATEST)] + [(LATEST, LATEST)] * 3
    db = open_database(database, data_dir / "fma.sqlite3")
    try:
        rows = db.all("SELECT version FROM schema_version ORDER BY version")
    finally:
        db.close()
    assert [row["version"] for row in rows] == list(range(1, LATEST + 1))
