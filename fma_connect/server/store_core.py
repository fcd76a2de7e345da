"""The core under :class:`~.store.Store`: its database, transactions and queries, and
what every table's code shares (rows, update statuses, new blobs, timestamps).

The database is SQLite in the data directory, or a PostgreSQL that replicas share
(:mod:`.database`: what a transaction guarantees on each; the SQL of the store is the
subset both speak). Its schema is versioned and upgraded at start (:mod:`.migrations`).
A write that returned is on disk, so an acknowledged update survives a crash or restart.
Rows come back as plain dicts; JSON columns are decoded.

A write that needs a row another request may delete meanwhile (an update or a round of
a model being deleted, a score of its aggregate) checks for it in its transaction
(:func:`_require`), and raises the 4xx :class:`~.errors.HTTPError` the request answers,
not a foreign-key error.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from .database import Connection, Database, open_database
from .errors import HTTPError, bad_request
from .migrations import migrate

__all__ = [
    "COMPLETE",
    "FAILED",
    "INVALID",
    "PENDING",
    "RUNNING",
    "NewBlob",
    "Row",
    "StoreCore",
    "now",
]

Row = dict[str, Any]

PENDING, RUNNING, COMPLETE, FAILED, INVALID = range(5)

#: Model columns stored as JSON text.
_JSON_COLUMNS = (
    "requirement_args",
    "aggregator_args",
    "update_schema",
    "client_agg_results_schema",
    "validation_results",
    "tensor_names",
)


class NewBlob(NamedTuple):
    """A blob file just written, for its row.

    Attributes:
        codec: The codec of its bytes.
        filename: Its file in the blob store.
        nbytes: Its size.
        tensor_names: The names of its tensors in order, for a codec that carries none
            (plain ``json``) when the sender gave them; None otherwise.
        sha256: The SHA-256 (hex) of its bytes, when computed (a signed update's; it is
            stored with the signature, not in the blob's row).
    """

    codec: str
    filename: str
    nbytes: int
    tensor_names: list[str] | None = None
    sha256: str | None = None


def now() -> str:
    """Return the current UTC time in the stock service's format."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _json_or_none(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


class StoreCore:
    """The database of a :class:`~.store.Store`, with its transactions and queries.

    Every part of the store (its ``store_*`` modules) builds on this; see
    :class:`~.store.Store` for the arguments and attributes.
    """

    def __init__(self, path: Path, database: str | None = None) -> None:
        self.db: Database = open_database(database, path, _JSON_COLUMNS)
        #: Called inside :meth:`~.store_rounds.RoundRows.record_round`'s transaction with
        #: the model's id; it raises to refuse the commit (a round whose lease was taken
        #: over, see :mod:`.leases`).
        self.round_fence: Callable[[Connection, int], None] | None = None
        try:
            self.schema_found, _ = migrate(self.db)
        except BaseException:
            self.db.close()
            raise

    def close(self) -> None:
        """Close the database."""
        self.db.close()

    def transaction(self, *, durable: bool = True) -> AbstractContextManager[Connection]:
        """Run the block as one write transaction (rolled back if it raises; ``durable``:
        see :meth:`.database.Database.transaction`)."""
        return self.db.transaction(durable=durable)

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Run a query and return every row.

        Integers have 64 bits: a parameter beyond them (an id from a URL, a page
        number) matches no row, instead of failing.
        """
        return self.db.all(sql, params)

    def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        """Run a query and return its first row, or None (see :meth:`all`)."""
        return self.db.one(sql, params)

    def count(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run a ``SELECT COUNT(*) AS n ...`` query."""
        row = self.one(sql, params)
        return int(row["n"]) if row else 0


def _require(conn: Connection, table: str, row_id: int, error: Callable[[], HTTPError]) -> None:
    """Raise ``error()`` unless ``table`` has the row (checked inside the write's transaction)."""
    if conn.execute(f"SELECT id FROM {table} WHERE id = ?", (row_id,)).fetchone() is None:
        raise error()


def _deleted(field: str, row_id: int) -> HTTPError:
    return bad_request(field, f'Invalid pk "{row_id}" - object does not exist (it was deleted).')


def _insert_blob(conn: Connection, model_id: int, blob: NewBlob) -> int:
    cursor = conn.execute(
        "INSERT INTO blobs (federated_model, codec, filename, nbytes, tensor_names) "
        "VALUES (?, ?, ?, ?, ?) RETURNING id",
        (model_id, blob.codec, blob.filename, blob.nbytes, _json_or_none(blob.tensor_names)),
    )
    return int(cursor.fetchone()["id"])
