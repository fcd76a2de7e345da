"""The database layer: which URLs open what, and input one backend cannot store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from server_helpers import request

from fma_connect.server.database import (
    Database,
    DatabaseError,
    SQLiteDatabase,
    open_database,
    shown_url,
)
from fma_connect.server.testing import RunningServer


def test_urls_name_their_database_and_others_are_refused(tmp_path: Path) -> None:
    default = open_database(None, tmp_path / "default.sqlite3")
    named = open_database(f"sqlite:///{tmp_path}/named.sqlite3", tmp_path / "unused.sqlite3")
    try:
        assert isinstance(default, SQLiteDatabase) and not default.shared
        assert isinstance(named, SQLiteDatabase)
        assert (tmp_path / "named.sqlite3").is_file()
        assert not (tmp_path / "unused.sqlite3").exists()
    finally:
        default.close()
        named.close()
    with pytest.raises(DatabaseError, match=r"must be a postgresql://.*got 'mysql://u:\*\*\*@h/d'"):
        open_database("mysql://u:secret@h/d", tmp_path / "x.sqlite3")
    with pytest.raises(DatabaseError, match="cannot connect to the database postgresql://"):
        open_database("postgresql://nobody@127.0.0.1:1/none?connect_timeout=2", tmp_path)


def test_a_shown_url_hides_its_password() -> None:
    assert shown_url("postgresql://fma:s3cret@db:5432/fma") == "postgresql://fma:***@db:5432/fma"
    assert shown_url("postgresql://fma@db/fma") == "postgresql://fma@db/fma"


def test_text_with_a_nul_is_kept_or_refused_with_a_400(server: RunningServer, backend: str) -> None:
    body = {"name": "a\u0000b", "aggregator": "avg_values_if_data", "allow_aggregation": True}
    response = request(server, "POST", "/api/v1/models/", admin=True, json=body)
    if backend == "sqlite":  # SQLite stores any text
        assert response.status_code == 201, response.text
        assert response.json()["name"] == "a\u0000b"
        return
    assert response.status_code == 400, response.text  # PostgreSQL's text cannot hold NUL
    assert "NUL character" in response.json()["non_field_errors"][0]
    listed = request(server, "GET", "/api/v1/models/", admin=True)
    assert listed.status_code == 200 and listed.json() == []  # nothing half-stored


def _commit_waits_for_the_disk(conn: Any, dialect: str) -> bool:
    if dialect == "sqlite":
        return bool(conn.execute("PRAGMA synchronous").fetchone()["synchronous"] == 2)  # FULL
    return bool(conn.execute("SHOW synchronous_commit").fetchone()["synchronous_commit"] == "on")


def _insert_then_fail(db: Database) -> None:
    with db.transaction(durable=False) as conn:
        conn.execute("INSERT INTO t (x) VALUES (2)")
        raise RuntimeError("rolled back")


def test_a_transaction_not_durable_skips_the_wait_for_the_disk_and_only_itself(
    database: str | None, tmp_path: Path
) -> None:
    if database is not None:  # the test cluster runs with it off: on, as by default
        import psycopg
        from psycopg import sql

        with psycopg.connect(database, autocommit=True) as admin:
            name = admin.execute("SELECT current_database()").fetchone()[0]  # type: ignore[index]
            admin.execute(
                sql.SQL("ALTER DATABASE {} SET synchronous_commit TO on").format(
                    sql.Identifier(name)
                )
            )
    db = open_database(database, tmp_path / "fma.sqlite3")
    try:
        with db.transaction() as conn:
            conn.execute("CREATE TABLE t (x INTEGER)")
            assert _commit_waits_for_the_disk(conn, db.dialect)
        with db.transaction(durable=False) as conn:
            assert not _commit_waits_for_the_disk(conn, db.dialect)
            conn.execute("INSERT INTO t (x) VALUES (1)")
            with db.transaction() as inner:  # a block within it: the outer one decides
                assert not _commit_waits_for_the_disk(inner, db.dialect)
        with pytest.raises(RuntimeError, match="rolled back"):
            _insert_then_fail(db)
        with db.transaction() as conn:  # the connection's default is back after either
            assert _commit_waits_for_the_disk(conn, db.dialect)
        assert db.all("SELECT x FROM t") == [{"x": 1}]  # committed, and the other rolled back
    finally:
        db.close()
