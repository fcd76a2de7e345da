"""A throwaway PostgreSQL cluster for tests and benchmarks: made, served, removed.

::

    with throwaway_cluster() as cluster:
        url = cluster.create_database("test_1")   # postgresql://fma@127.0.0.1:PORT/test_1

It runs the ``initdb`` and ``pg_ctl`` of the newest ``/usr/lib/postgresql/*/bin`` (Debian's
``postgresql`` package), else of ``PATH``, in a temporary directory, listening on a free
127.0.0.1 port with trust authentication, and with ``fsync`` off: nothing in it outlives
the block, so nothing needs to reach the disk. Run as root, the cluster runs as the
``postgres`` user (PostgreSQL refuses root).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Cluster", "PostgresMissing", "find_postgres_bin", "throwaway_cluster"]

_USER = "fma"


class PostgresMissing(RuntimeError):
    """No PostgreSQL server binaries are installed; the message says how to get them."""


def find_postgres_bin() -> Path:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``.

    Raises:
        PostgresMissing: none is installed.
    """
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: (
            int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0
        ),
    )
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    raise PostgresMissing(
        "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb, no initdb on PATH): "
        "apt-get install postgresql (as .ci/run does)"
    )


@dataclass
class Cluster:
    """A running throwaway cluster.

    Attributes:
        port: Its port on 127.0.0.1.
        directory: Its data directory (removed with it).
    """

    port: int
    directory: Path

    def url(self, database: str = "postgres") -> str:
        """The URL of one of its databases."""
        return f"postgresql://{_USER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create an empty database; return its URL."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            # FILE_COPY (PostgreSQL 15 on): a small template copies faster than through
            # the WAL, fsync being off.
            strategy = " STRATEGY = FILE_COPY" if conn.info.server_version >= 150000 else ""
            conn.execute(f'CREATE DATABASE "{name}"{strategy}')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop a database, closing any connection still open to it."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def throwaway_cluster(max_connections: int = 300) -> Iterator[Cluster]:
    """Start a cluster for the block; stop it and delete its files after.

    Raises:
        PostgresMissing: PostgreSQL is not installed.
        RuntimeError: ``initdb`` or ``pg_ctl start`` failed (with their output).
    """
    bin_dir = find_postgres_bin()
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: as the package's user
        account = pwd.getpwnam("postgres")
        runuser = shutil.which("runuser") or "/usr/sbin/runuser"
        as_user = [runuser, "-u", "postgres", "--"]
        # Under /tmp: a TMPDIR inside root's home would be out of the postgres user's reach.
        root = Path(tempfile.mkdtemp(prefix="fma-postgres-", dir="/tmp"))
        os.chown(root, account.pw_uid, account.pw_gid)
    else:
        root = Path(tempfile.mkdtemp(prefix="fma-postgres-"))
    data = root / "data"
    port = _free_port()
    options = (
        f"-p {port} -c listen_addresses=127.0.0.1 -k {root} -c fsync=off "
        f"-c synchronous_commit=off -c full_page_writes=off -c max_connections={max_connections}"
    )
    started = False
    try:
        _run(
            [
                *as_user,
                str(bin_dir / "initdb"),
                "-D",
                str(data),
                "-U",
                _USER,
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
            ]
        )
        _run(
            [
                *as_user,
                str(bin_dir / "pg_ctl"),
                "-D",
                str(data),
                "-o",
                options,
                "-l",
                str(root / "log"),
                "-w",
                "-t",
                "60",
                "start",
            ]
        )
        started = True
        yield Cluster(port, data)
    finally:
        if started:
            with contextlib.suppress(RuntimeError):
                _run(
                    [
                        *as_user,
                        str(bin_dir / "pg_ctl"),
                        "-D",
                        str(data),
                        "-m",
                        "immediate",
                        "-w",
                        "stop",
                    ]
                )
        shutil.rmtree(root, ignore_errors=True)


def _run(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}{result.stderr}"
        )
