"""Versioned schema of the server's database, upgraded in place at start-up.

The ``schema_version`` table holds a row per step applied (its number and when). At
start :func:`migrate` reads the highest number and applies every later step of
:data:`STEPS`, in order, in one transaction with the new numbers: an upgrade is
whole or not at all, and replicas starting together upgrade once (the transaction
holds the database's write lock, see :mod:`.database`). A database whose number is
higher than this code knows was upgraded by a newer fma-connect: the server refuses
to start rather than write rows that code would misread.

Step 1 is the schema of the releases before versioning (no ``schema_version`` table).
Its tables are created only if missing, and a SQLite file from the first releases
gets the columns added since, so any earlier database, or none, comes out the same.
Later steps change that schema; a step never changes once released (add a new one),
and each is idempotent (``IF NOT EXISTS``, column checks): a start on SQLite runs them
all, recording the new ones (see :func:`migrate`).

Types: SQLite's ``INTEGER`` is 64 bits, PostgreSQL's 32: the PostgreSQL DDL is this
text with ``BIGINT`` for ``INTEGER``, ``DOUBLE PRECISION`` for ``REAL``, and identity
columns for ``AUTOINCREMENT`` keys. ``model_clients`` gets a ``rowid`` column there (the
registration order, SQLite's implicit ``rowid``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import NamedTuple

from .database import Connection, Database, DatabaseError

__all__ = ["LATEST", "STEPS", "Step", "migrate", "schema_version"]

#: The tables of the first releases (fma-connect 0.1, before versioning).
_SCHEMA_1 = """
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
    "offset" INTEGER NOT NULL,
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


def _ddl(script: str, dialect: str) -> list[str]:
    """The statements of ``script`` (written for SQLite) in ``dialect``."""
    if dialect == "postgresql":
        script = script.replace(
            "INTEGER PRIMARY KEY AUTOINCREMENT",
            "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
        )
        script = re.sub(r"\bINTEGER\b", "BIGINT", script)
        script = re.sub(r"\bREAL\b", "DOUBLE PRECISION", script)
    return [statement.strip() for statement in script.split(";") if statement.strip()]


def _run(conn: Connection, dialect: str, script: str) -> None:
    for statement in _ddl(script, dialect):
        conn.execute(statement)


def _add_column(conn: Connection, dialect: str, table: str, column: str) -> None:
    """Add ``column`` (``"name TYPE"``, SQLite's types) to ``table`` unless it is there."""
    if dialect == "postgresql":
        (statement,) = _ddl(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column}", dialect)
        conn.execute(statement)
        return
    names = {row["name"] for row in conn.execute(f"PRAGMA table_info({table})").fetchall()}
    if column.split()[0] not in names:
        conn.execute(f"ALTER TABLE {table} ADD COLUMN {column}")


def _step_1(conn: Connection, dialect: str) -> None:
    _run(conn, dialect, _SCHEMA_1)
    if dialect == "postgresql":
        _add_column(conn, dialect, "model_clients", "rowid INTEGER GENERATED ALWAYS AS IDENTITY")
        return
    # Files of the first releases, which lacked columns added before versioning.
    _add_column(conn, dialect, "blobs", "tensor_names TEXT")  # names of plain JSON tensors
    for column in ("aggregate_fraction REAL", "aggregate_values TEXT", "residual_blob INTEGER"):
        _add_column(conn, dialect, "models", column)  # sparse aggregates
    _add_column(conn, dialect, "aggregates", "step_blob INTEGER")
    _add_column(conn, dialect, "upload_chunks", "boot TEXT")  # the first resumable uploads


def _step_2(conn: Connection, dialect: str) -> None:
    _add_column(conn, dialect, "models", "aggregator_args TEXT")
    _run(
        conn,
        dialect,
        """
        CREATE TABLE IF NOT EXISTS aggregator_states (
            federated_model INTEGER PRIMARY KEY REFERENCES models(id) ON DELETE CASCADE,
            blob INTEGER NOT NULL REFERENCES blobs(id),
            aggregator TEXT NOT NULL,
            aggregate INTEGER,
            updated_on TEXT NOT NULL
        )
        """,
    )


def _step_3(conn: Connection, dialect: str) -> None:
    _run(
        conn,
        dialect,
        """
        CREATE TABLE IF NOT EXISTS round_leases (
            federated_model INTEGER PRIMARY KEY REFERENCES models(id) ON DELETE CASCADE,
            holder TEXT NOT NULL,
            expires REAL NOT NULL
        )
        """,
    )
    # Until when a server completes the upload (see uploads.Uploads.complete).
    _add_column(conn, dialect, "uploads", "completing_until REAL")


def _step_4(conn: Connection, dialect: str) -> None:
    # A model's round policy (see policies.py); NULL: off, as for every older model.
    for column in (
        "round_deadline REAL",
        "round_quorum INTEGER",
        "min_clients INTEGER",
        "drop_after_missed INTEGER",
    ):
        _add_column(conn, dialect, "models", column)


_SCHEMA_5 = """
CREATE TABLE IF NOT EXISTS client_keys (
    key_id TEXT PRIMARY KEY,
    client TEXT NOT NULL REFERENCES clients(uuid),
    public_key TEXT NOT NULL,
    status TEXT NOT NULL,
    created_on TEXT NOT NULL,
    retired_on TEXT,
    revoked_on TEXT
);
CREATE INDEX IF NOT EXISTS client_keys_client ON client_keys (client, status);
CREATE TABLE IF NOT EXISTS enrolment_tokens (
    token_hash TEXT PRIMARY KEY,
    federated_model INTEGER NOT NULL REFERENCES models(id) ON DELETE CASCADE,
    created_on TEXT NOT NULL,
    expires REAL,
    client TEXT,
    used_by TEXT,
    used_on TEXT
);
CREATE TABLE IF NOT EXISTS allowed_keys (
    federated_model INTEGER NOT NULL REFERENCES models(id) ON DELETE CASCADE,
    key_id TEXT NOT NULL,
    public_key TEXT NOT NULL,
    added_on TEXT NOT NULL,
    PRIMARY KEY (federated_model, key_id)
);
CREATE TABLE IF NOT EXISTS request_nonces (
    client TEXT NOT NULL,
    nonce TEXT NOT NULL,
    expires REAL NOT NULL,
    PRIMARY KEY (client, nonce)
);
CREATE INDEX IF NOT EXISTS request_nonces_expires ON request_nonces (expires);
CREATE TABLE IF NOT EXISTS update_signatures (
    update_id INTEGER PRIMARY KEY REFERENCES updates(id) ON DELETE CASCADE,
    key_id TEXT NOT NULL REFERENCES client_keys(key_id),
    sha256 TEXT NOT NULL,
    signature TEXT NOT NULL,
    signed_on TEXT NOT NULL
)
"""


def _step_5(conn: Connection, dialect: str) -> None:
    # Client identity (docs/SECURITY.md): keys bound to clients (rotated and revoked ones
    # kept, to verify the updates they signed), enrolment tokens (hashed), allow-listed
    # keys, the nonces of signed requests (in the database: a replay is refused by every
    # replica) and each signed update's digest and signature.
    _run(conn, dialect, _SCHEMA_5)
    _add_column(conn, dialect, "models", "enrolment TEXT")  # NULL: open, as before
    _add_column(conn, dialect, "clients", "revoked_on TEXT")
    # Admission of a client to a model by its enrolment (a token spent, an allow-listed
    # key, or an open model's enrol): a registration alone admits it to open models only.
    _add_column(conn, dialect, "model_clients", "admitted_key TEXT")
    _add_column(conn, dialect, "model_clients", "admitted_on TEXT")
    # What an aggregate was made of, written as its round commits (admin verify): how
    # many updates, the SHA-256 of their sorted ids, and of the aggregate's blob.
    _add_column(conn, dialect, "aggregates", "inputs INTEGER")
    _add_column(conn, dialect, "aggregates", "inputs_sha256 TEXT")
    _add_column(conn, dialect, "aggregates", "blob_sha256 TEXT")


class Step(NamedTuple):
    """One schema change: its number, what it does, and the function doing it."""

    version: int
    description: str
    apply: Callable[[Connection, str], None]


#: Every schema change, in order; a database at version N has had steps 1 to N.
STEPS = (
    Step(1, "the tables of fma-connect 0.1 (before versioning)", _step_1),
    Step(2, "aggregator arguments (models.aggregator_args) and states", _step_2),
    Step(3, "replicas: round leases (round_leases), upload completion claims", _step_3),
    Step(4, "round policies: deadline, quorum, minimum clients, missed rounds", _step_4),
    Step(5, "client identity: keys, enrolment, nonces, signatures, aggregate inputs", _step_5),
)
#: The schema version this code writes.
LATEST = STEPS[-1].version

_VERSION_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_version "
    "(version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_on TEXT NOT NULL)"
)


def schema_version(conn: Connection) -> int:
    """The database's schema version (0: none recorded, a database from before versioning
    or an empty one)."""
    conn.execute(_VERSION_TABLE)
    row = conn.execute("SELECT MAX(version) AS version FROM schema_version").fetchone()
    return int(row["version"] or 0) if row else 0


def migrate(database: Database) -> tuple[int, int]:
    """Bring ``database`` to :data:`LATEST` in place; return ``(found, now)`` versions.

    Raises:
        DatabaseError: the database is newer than this code.
    """
    with database.transaction() as conn:
        found = schema_version(conn)
        if found > LATEST:
            raise DatabaseError(
                f"the database {database.where} has schema version {found}, newer than this "
                f"fma-connect knows (up to {LATEST}): it was upgraded by a newer release. "
                "Run that release (or a newer one), or point --database at another database."
            )
        # On SQLite the steps applied before run again (each is idempotent): a file whose
        # version has a change that it lacks (a column dropped by hand) gets it back, as
        # every start did before versioning, in a few milliseconds. Not on PostgreSQL,
        # where even a no-op ALTER TABLE locks its table against the other replicas.
        again = database.dialect == "sqlite"
        for step in STEPS if again else STEPS[found:]:
            step.apply(conn, database.dialect)
            if step.version > found:
                conn.execute(
                    "INSERT INTO schema_version (version, description, applied_on) "
                    "VALUES (?, ?, ?)",
                    (step.version, step.description, datetime.now(UTC).isoformat()),
                )
    return found, LATEST
