"""The server's data directory: checked, created, and held by one server at a time.

With its SQLite database (the default), a server takes an exclusive ``flock`` on
``<data_dir>/fma.lock`` for as long as it runs, so a second server on the same directory
(which would corrupt the blob sweep and the rounds) refuses to start. The kernel drops
the lock when the process dies, so a crash never leaves a stale lock behind. Replicas
on one PostgreSQL database may share a directory: they take no lock (see
:mod:`.service` for what their start-up sweeps leave alone).
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from ..settings import DATABASE_ENV

try:
    import fcntl
except ImportError:  # pragma: no cover  (Windows: no flock; run one server per directory)
    fcntl = None  # type: ignore[assignment]

__all__ = ["DataDirError", "DataDirLock", "read_admin_token"]

LOCK_FILE = "fma.lock"
DATABASE = "fma.sqlite3"


class DataDirError(RuntimeError):
    """The data directory cannot be used; the message says why and what to do."""


def prepare(data_dir: Path) -> None:
    """Create the data directory if missing.

    Raises:
        DataDirError: it is a file, or cannot be created.
    """
    if data_dir.exists() and not data_dir.is_dir():
        raise DataDirError(f"data directory {data_dir} is not a directory (it is a file)")
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataDirError(
            f"cannot create data directory {data_dir}: {exc.strerror or exc}"
        ) from exc


class DataDirLock:
    """An exclusive lock on a data directory, held until :meth:`release`.

    Raises:
        DataDirError: another server holds it, or the lock file cannot be opened.
    """

    def __init__(self, data_dir: Path) -> None:
        path = data_dir / LOCK_FILE
        try:
            self._fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise DataDirError(f"cannot open {path}: {exc.strerror or exc}") from exc
        if fcntl is None:
            return
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(self._fd, 32, 0).decode(errors="replace").strip()
            os.close(self._fd)
            self._fd = None
            who = f" (pid {holder})" if holder.isdigit() else ""
            raise DataDirError(
                f"data directory {data_dir} is in use by another fma-connect server{who}; "
                "stop that server or choose another --data-dir"
            ) from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, str(os.getpid()).encode(), 0)

    def release(self) -> None:
        """Release the lock (closing the file drops it); idempotent."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def read_admin_token(data_dir: Path, database: str | None = None) -> str:
    """Return the admin token a server stored, without starting a server.

    Args:
        data_dir: The server's data directory (its SQLite database is read).
        database: The server's PostgreSQL URL instead (default ``FMA_CONNECT_DATABASE``).

    Raises:
        DataDirError: not a directory, no database, or no admin token in it yet.
    """
    url = database or os.environ.get(DATABASE_ENV) or None
    if url is not None:
        return _postgres_admin_token(url)
    if data_dir.exists() and not data_dir.is_dir():
        raise DataDirError(f"data directory {data_dir} is not a directory (it is a file)")
    path = data_dir / DATABASE
    missing = DataDirError(
        f"no admin token stored in {data_dir}: start `fma-connect serve --data-dir "
        f"{data_dir}` once (it creates one), or set FMA_CONNECT_ADMIN_TOKEN"
    )
    if not path.is_file():
        raise missing
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            row = conn.execute("SELECT token FROM users WHERE id = 1").fetchone()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise DataDirError(f"cannot read {path}: {exc}") from exc
    if row is None:
        raise missing
    return str(row[0])


def _postgres_admin_token(url: str) -> str:
    import psycopg

    from .database import open_database, shown_url

    missing = DataDirError(
        f"no admin token stored in the database {shown_url(url)}: start `fma-connect serve "
        "--database ...` once (it creates one), or set FMA_CONNECT_ADMIN_TOKEN"
    )
    try:
        database = open_database(url, Path())
    except RuntimeError as exc:  # DatabaseError: an unknown URL, or unreachable
        raise DataDirError(str(exc)) from exc
    try:
        row = database.one("SELECT token FROM users WHERE id = 1")
    except psycopg.errors.UndefinedTable:
        raise missing from None
    except psycopg.Error as exc:
        raise DataDirError(f"cannot read the database {database.where}: {exc}") from exc
    finally:
        database.close()
    if row is None:
        raise missing
    return str(row["token"])
