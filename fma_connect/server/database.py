"""The server's metadata database: SQLite in the data directory, or a shared PostgreSQL.

::

    open_database(None, data_dir)                          # <data_dir>/fma.sqlite3
    open_database("postgresql://fma@db:5432/fma", data_dir)  # shared by any number of replicas

The store's SQL is written once, in the subset both engines speak (``?`` placeholders,
``INSERT ... ON CONFLICT``, ``RETURNING``, ``"offset"`` quoted); :class:`PostgresDatabase`
turns the placeholders into psycopg's. Both give the same two ways in:

* :meth:`~Database.transaction`: one write transaction. Write transactions never run
  at once: SQLite's ``BEGIN IMMEDIATE`` takes its database-wide write lock, and on
  PostgreSQL every write transaction first takes one transaction-level advisory lock
  (``pg_advisory_xact_lock``), held to its commit. So a transaction that checks a row
  and then writes (an idempotency key, a model that may be deleted meanwhile, a round's
  lease) is as safe across replicas as it is in one SQLite process, whichever replica
  runs it; reads never wait for it. A transaction opened inside another one in the same
  thread is part of it.
* :meth:`~Database.all` / :meth:`~Database.one`: a read, outside any transaction
  (inside one when the thread has one open, seeing its writes).

SQLite keeps today's durability: WAL with ``synchronous=FULL``, so a write that returned
is on disk. PostgreSQL's is the server's (``synchronous_commit`` on by default). The one
exception is a transaction opened with ``durable=False`` (a resumable chunk's record,
whose loss only means the chunk is sent again): atomic, but its commit does not wait
for the disk.

Libraries: stdlib ``sqlite3`` and psycopg 3 (the maintained PostgreSQL driver: binary
wheels, server-side parameters, automatic prepared statements) with its pool package
``psycopg_pool``, both imported only when a PostgreSQL URL is given.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import orjson

from ..settings import DATABASE_ENV
from .errors import bad_request

if TYPE_CHECKING:
    import psycopg

__all__ = [
    "DATABASE_ENV",
    "SQLITE_FILE",
    "Connection",
    "Cursor",
    "Database",
    "DatabaseError",
    "PostgresDatabase",
    "Row",
    "SQLiteDatabase",
    "open_database",
    "shown_url",
]

#: The SQLite database's file in a data directory.
SQLITE_FILE = "fma.sqlite3"
#: The advisory lock every PostgreSQL write transaction takes ("FMA_WRIT" in ASCII).
WRITE_LOCK = 0x464D415F57524954
#: Connections a server keeps to PostgreSQL at most: the worker threads that run requests
#: (anyio's 40) and rounds wait for one when all are busy.
POOL_SIZE = 24

#: Most seconds a SQLite connection waits for another one's write to open the file.
_BUSY_WAIT = 30.0

Row = dict[str, Any]


class DatabaseError(RuntimeError):
    """The database cannot be used; the message says why and what to do."""


class Cursor(Protocol):
    """What :meth:`Connection.execute` returns."""

    @property
    def rowcount(self) -> int:
        """Rows the statement changed."""

    def fetchone(self) -> Any:
        """The next row (a :data:`Row`), or None."""

    def fetchall(self) -> list[Any]:
        """The remaining rows."""


class Connection(Protocol):
    """The connection a transaction block runs its statements on."""

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Cursor:
        """Run one statement."""

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> object:
        """Run one statement once per parameter row."""


class Database(ABC):
    """One database of a server (see the module notes).

    Attributes:
        dialect: ``sqlite`` or ``postgresql``.
        shared: Whether other servers may use it at the same time (PostgreSQL), so
            nothing found in it may be assumed left by a dead process of this one.
        where: The database for messages (a path, or the URL without its password).
        integrity_errors: What a violated constraint raises.
    """

    dialect: str
    shared: bool
    where: str
    integrity_errors: tuple[type[Exception], ...]

    @abstractmethod
    def transaction(self, *, durable: bool = True) -> AbstractContextManager[Connection]:
        """Run the block as one write transaction (rolled back if it raises).

        Args:
            durable: Whether the commit is on disk when the block returns (the
                default). False for a record whose loss in a crash of the machine costs
                nothing but work done again (a resumable chunk's, which the client then
                sends again): its commit does not wait for the disk, though it stays
                atomic, and the next durable commit makes it durable too. Within
                another transaction the outer one decides.
        """

    @abstractmethod
    def all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Run a query and return every row (none for an integer parameter beyond 64 bits)."""

    @abstractmethod
    def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        """Run a query and return its first row, or None (see :meth:`all`)."""

    @abstractmethod
    def close(self) -> None:
        """Close every connection."""


def _decoder(json_columns: Sequence[str]) -> Callable[[Row], Row]:
    columns = tuple(json_columns)

    def decode(row: Row) -> Row:
        for key in columns:
            if row.get(key) is not None:
                row[key] = orjson.loads(row[key])
        return row

    return decode


# -- SQLite ------------------------------------------------------------------------------


class SQLiteDatabase(Database):
    """A SQLite file: one connection, shared by the server's threads behind a lock.

    Args:
        path: The database file (created if missing).
        json_columns: Columns holding JSON text, decoded in every row read.
    """

    dialect = "sqlite"
    shared = False
    integrity_errors = (sqlite3.IntegrityError,)

    def __init__(self, path: Path, json_columns: Sequence[str] = ()) -> None:
        self.where = str(path)
        decode = _decoder(json_columns)

        def row(cursor: sqlite3.Cursor, values: tuple[Any, ...]) -> Row:
            return decode({c[0]: v for c, v in zip(cursor.description, values, strict=True)})

        self._lock = threading.RLock()
        try:
            self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._conn.row_factory = row
            _wal(self._conn)
            for pragma in ("synchronous=FULL", "foreign_keys=ON"):
                self._conn.execute(f"PRAGMA {pragma}")
        except sqlite3.Error as exc:
            raise DatabaseError(f"cannot open the database {path}: {exc}") from exc

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._conn.close()

    @contextmanager
    def transaction(self, *, durable: bool = True) -> Iterator[Connection]:
        """Run the block as one write transaction (rolled back if it raises; see
        :meth:`Database.transaction` for ``durable``)."""
        with self._lock:
            if self._conn.in_transaction:  # opened by this thread: the lock is reentrant
                yield self._conn
                return
            if not durable:  # in WAL mode, NORMAL syncs at checkpoints, not at commits
                self._conn.execute("PRAGMA synchronous=NORMAL")
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    yield self._conn
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
                self._conn.execute("COMMIT")
            finally:
                if not durable:
                    self._conn.execute("PRAGMA synchronous=FULL")

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Run a query and return every row.

        SQLite integers have 64 bits: a parameter beyond them (an id from a URL, a
        page number) matches no row, instead of failing.
        """
        with self._lock:
            try:
                return self._conn.execute(sql, params).fetchall()
            except OverflowError:
                return []

    def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        """Run a query and return its first row, or None (see :meth:`all`)."""
        with self._lock:
            try:
                row: Row | None = self._conn.execute(sql, params).fetchone()
            except OverflowError:
                return None
            return row


def _wal(conn: sqlite3.Connection) -> None:
    """Put the file in WAL mode, waiting while another connection writes to it: SQLite
    answers this pragma "database is locked" at once, without its busy timeout (another
    process reading the file, such as ``fma-connect admin-token``, or a test's)."""
    deadline = time.monotonic() + _BUSY_WAIT
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


# -- PostgreSQL --------------------------------------------------------------------------


@lru_cache(maxsize=512)
def postgres_sql(sql: str) -> str:
    """The store's SQL in psycopg's placeholders (``?`` -> ``%s``, ``%`` doubled)."""
    return sql.replace("%", "%%").replace("?", "%s")


class _PostgresConnection:
    """A psycopg connection that takes the store's SQL; bad input in a parameter (a NUL
    character, an integer beyond 64 bits) is answered 400, not 500."""

    def __init__(self, conn: psycopg.Connection[Row]) -> None:
        self._conn = conn

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Cursor:
        with _bad_values():
            return self._conn.execute(postgres_sql(sql), parameters)

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> object:
        with _bad_values(), self._conn.cursor() as cursor:
            cursor.executemany(postgres_sql(sql), list(parameters))
        return None


@contextmanager
def _bad_values() -> Iterator[None]:
    import psycopg

    try:
        yield
    except psycopg.errors.NumericValueOutOfRange as exc:
        raise bad_request(
            "non_field_errors",
            f"A number in the request is out of range: {exc.diag.message_primary}",
        ) from exc
    except psycopg.DataError as exc:
        if "NUL" not in str(exc):
            raise
        raise bad_request(
            "non_field_errors",
            "A text value in the request holds a NUL character (U+0000), which this "
            "server's database cannot store; send the text without it.",
        ) from exc


class PostgresDatabase(Database):
    """A PostgreSQL database, which any number of servers may share.

    Connections come from a pool (at most :data:`POOL_SIZE`), in autocommit mode: a
    read is one statement; a transaction is ``BEGIN``, the advisory write lock, the
    block's statements, ``COMMIT``.

    Args:
        url: A ``postgresql://`` URL (libpq's: ``postgresql://user:password@host:port/db``,
            with ``?sslmode=`` and other parameters as libpq takes them).
        json_columns: Columns holding JSON text, decoded in every row read.

    Raises:
        DatabaseError: it cannot be reached (the message has libpq's reason).
    """

    dialect = "postgresql"
    shared = True

    def __init__(self, url: str, json_columns: Sequence[str] = ()) -> None:
        import psycopg
        from psycopg_pool import ConnectionPool

        self.where = shown_url(url)
        self.integrity_errors = (psycopg.IntegrityError,)
        decode = _decoder(json_columns)

        def row_factory(cursor: psycopg.Cursor[Any]) -> Callable[[Sequence[Any]], Row]:
            names = [column.name for column in cursor.description or ()]

            def make(values: Sequence[Any]) -> Row:
                return decode(dict(zip(names, values, strict=True)))

            return make

        try:  # once by hand first: a pool would retry in the background and say less
            psycopg.connect(url, connect_timeout=10).close()
        except psycopg.Error as exc:
            raise DatabaseError(f"cannot connect to the database {self.where}: {exc}") from exc
        self._pool: ConnectionPool[psycopg.Connection[Row]] = ConnectionPool(
            url,
            min_size=1,
            max_size=POOL_SIZE,
            kwargs={"autocommit": True, "row_factory": row_factory},
            name="fma-connect",
            open=True,
        )
        self._local = threading.local()

    def close(self) -> None:
        """Close the pool and its connections."""
        self._pool.close()

    @contextmanager
    def transaction(self, *, durable: bool = True) -> Iterator[Connection]:
        """Run the block as one write transaction (rolled back if it raises; see
        :meth:`Database.transaction` for ``durable``)."""
        held: Connection | None = getattr(self._local, "conn", None)
        if held is not None:  # opened by this thread: the block is part of it
            yield held
            return
        with self._pool.connection() as conn, conn.transaction():
            if not durable:  # this transaction's alone: the pooled connection keeps "on"
                conn.execute("SET LOCAL synchronous_commit TO off")
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
            wrapped = _PostgresConnection(conn)
            self._local.conn = wrapped
            try:
                yield wrapped
            finally:
                self._local.conn = None

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Run a query and return every row (none for an integer beyond 64 bits)."""
        import psycopg

        held: Connection | None = getattr(self._local, "conn", None)
        if held is not None:
            return held.execute(sql, params).fetchall()
        try:
            with self._pool.connection() as conn:
                return conn.execute(postgres_sql(sql), params).fetchall()
        except psycopg.errors.NumericValueOutOfRange:
            return []  # as SQLite's: no row has such an id
        except psycopg.DataError as exc:
            if "NUL" in str(exc):
                return []  # a lookup of text holding NUL: no stored text holds one
            raise

    def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        """Run a query and return its first row, or None (see :meth:`all`)."""
        rows = self.all(sql, params)
        return rows[0] if rows else None


# -- opening -----------------------------------------------------------------------------


def shown_url(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")
    user = (parts.username or "") + ":***"
    return urlunsplit(parts._replace(netloc=f"{user}@{netloc[2]}"))


_POSTGRES = re.compile(r"postgres(ql)?(\+psycopg)?://", re.IGNORECASE)


def open_database(url: str | None, sqlite_path: Path, json_columns: Sequence[str] = ()) -> Database:
    """Open the database ``url`` names; None or empty: the SQLite file ``sqlite_path``.

    Args:
        url: ``postgresql://...`` (``postgres://`` and SQLAlchemy's
            ``postgresql+psycopg://`` are taken too), ``sqlite:///<path>``, or None.
        sqlite_path: The default database (``<data_dir>/fma.sqlite3``).
        json_columns: Columns holding JSON text, decoded in every row read.

    Raises:
        DatabaseError: an unknown kind of URL, or a database that cannot be opened.
    """
    if not url:
        return SQLiteDatabase(sqlite_path, json_columns)
    if _POSTGRES.match(url):
        scheme_end = url.index("://")
        return PostgresDatabase("postgresql" + url[scheme_end:], json_columns)
    if url.lower().startswith("sqlite:///"):
        return SQLiteDatabase(Path(url[len("sqlite:///") :]), json_columns)
    raise DatabaseError(
        f"--database (or {DATABASE_ENV}) must be a postgresql://user:password@host:port/name "
        f"URL or sqlite:////absolute/path; got {shown_url(url)!r}"
    )
