"""``fma-connect serve``: run the reference server with uvicorn in this process."""

from __future__ import annotations

import contextlib
import os
import shlex
import socket
import sqlite3
import ssl
import sys
from pathlib import Path

import uvicorn

from ..settings import DATA_DIR_ENV
from .app import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_TENSORS, create_app
from .bounds import (
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
    DEFAULT_MAX_HEADER_BYTES,
)
from .database import DatabaseError
from .datadir import DataDirError
from .heap import keep_heap
from .leases import DEFAULT_LEASE
from .migrations import LATEST
from .protocol import server_config
from .rounds import AutoAggregate
from .tls import TLSError, is_loopback, server_context
from .uploads import DEFAULT_EXPIRY

__all__ = ["DEFAULT_DATA_DIR", "bind", "plain_http_warning", "serve"]

#: Where ``serve`` keeps its data unless told otherwise (``FMA_CONNECT_DATA_DIR`` overrides).
DEFAULT_DATA_DIR = "fma-connect-data"


def default_data_dir() -> Path:
    """``FMA_CONNECT_DATA_DIR``, else ``./fma-connect-data``."""
    return Path(os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR)


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``(host, port)`` (IPv6 if ``host`` has a colon), not listening.

    It is made with ``IPPROTO_TCP`` spelled out: asyncio turns Nagle's algorithm off
    (``TCP_NODELAY``) only on connections accepted from such a socket, and without that
    every request on a kept-alive connection waits about 40 ms for a delayed ACK.

    Raises:
        OSError: the address cannot be bound (in use, not local, ...).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def plain_http_warning(host: str, *, tls: bool) -> str | None:
    """What ``serve`` prints at start when it serves plain HTTP beyond loopback, else None."""
    if tls or is_loopback(host):
        return None
    return (
        f"WARNING: serving plain HTTP on {host}, beyond this machine: client UUIDs, "
        "admin tokens and model weights cross the network in clear text, readable and "
        "changeable by anyone on the path. Give --tls-cert and --tls-key, or put a "
        "TLS-terminating proxy in front and bind 127.0.0.1 (docs/SECURITY.md)."
    )


def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    data_dir: Path | None = None,
    *,
    auto_aggregate: AutoAggregate = "sync",
    log_level: str = "info",
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_tensors: int = DEFAULT_MAX_TENSORS,
    header_timeout: float = DEFAULT_HEADER_TIMEOUT,
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    max_connections: int | None = None,
    max_connections_per_client: int = DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
    upload_expiry: float = DEFAULT_EXPIRY,
    upload_quota: int | None = None,
    database: str | None = None,
    blobs: str | None = None,
    s3_endpoint_url: str | None = None,
    round_lease: float = DEFAULT_LEASE,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    tls_client_ca: Path | None = None,
) -> int:
    """Serve until interrupted; return the exit code.

    Prints ``listening on http://HOST:PORT`` once the port is bound (with ``port`` 0,
    the port the system chose), and the admin token when this start created it.
    The limits and bounds (``max_body_bytes`` ... ``upload_quota``) and the storage
    (``database``, ``blobs``, ``s3_endpoint_url``, ``round_lease``) are
    :func:`~fma_connect.server.create_app`'s. With ``tls_cert`` (and ``tls_key`` unless
    the certificate file holds the key) it serves HTTPS; with ``tls_client_ca`` too,
    only to clients whose certificate that CA signed (see :mod:`.tls`). Without TLS on
    an address other than loopback, it warns on stderr that everything crosses the
    network in clear text.

    The TLS files are loaded, then the port is bound, before the data directory is
    opened, so a start that fails (a bad certificate, port taken, directory in use by
    another server, not a directory) creates no admin token that it would not show.
    """
    data_dir = data_dir if data_dir is not None else default_data_dir()
    tls: ssl.SSLContext | None = None
    if tls_cert is not None:
        try:
            tls = server_context(tls_cert, tls_key, tls_client_ca)
        except TLSError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    elif tls_key is not None or tls_client_ca is not None:
        print("error: --tls-key and --tls-client-ca need --tls-cert", file=sys.stderr)
        return 1
    try:
        sock = bind(host, port)
    except OSError as exc:
        print(f"error: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        return 1
    try:
        app = create_app(
            data_dir,
            auto_aggregate=auto_aggregate,
            max_body_bytes=max_body_bytes,
            max_tensors=max_tensors,
            header_timeout=header_timeout,
            idle_timeout=idle_timeout,
            max_connections=max_connections,
            max_connections_per_client=max_connections_per_client,
            max_header_bytes=max_header_bytes,
            upload_expiry=upload_expiry,
            upload_quota=upload_quota,
            database=database,
            blobs=blobs,
            s3_endpoint_url=s3_endpoint_url,
            round_lease=round_lease,
        )
    except (DataDirError, DatabaseError, OSError, sqlite3.Error, ValueError) as exc:
        where = f" (database in {data_dir})" if isinstance(exc, sqlite3.Error) else ""
        print(f"error: {exc}{where}", file=sys.stderr)
        sock.close()
        return 1
    service = app.state.service
    sock.listen(128)  # connections made before uvicorn runs wait in the backlog
    bound_port = sock.getsockname()[1]
    shown = f"[{host}]" if sock.family == socket.AF_INET6 else host
    print(f"fma-connect server: data in {data_dir.resolve()}")
    db = service.store.db
    if db.shared:
        print(f"database: {db.where} (shared: replicas may use it at once)")
    if service.store.schema_found != 0 and service.store.schema_found < LATEST:
        print(f"database schema upgraded from version {service.store.schema_found} to {LATEST}")
    if service.admin_token_created:
        print(f"admin token (created now, stored in the database): {service.admin_token}")
    else:
        where = (
            f"--database {shlex.quote(db.where)}"
            if db.shared
            else f"--data-dir {shlex.quote(str(data_dir.resolve()))}"
        )
        print(
            "admin token: the stored one (or FMA_CONNECT_ADMIN_TOKEN); "
            f"run `fma-connect admin-token {where}` to print it"
        )
    warning = plain_http_warning(host, tls=tls is not None)
    if warning is not None:
        print(warning, file=sys.stderr, flush=True)
    scheme = "http" if tls is None else "https"
    mutual = " (client certificates required)" if tls_client_ca is not None else ""
    print(f"listening on {scheme}://{shown}:{bound_port}{mutual}", flush=True)
    config = server_config(app, tls=tls, log_level=log_level, lifespan="on")
    keep_heap()
    with contextlib.suppress(KeyboardInterrupt):  # re-raised by uvicorn after a clean stop
        uvicorn.Server(config).run(sockets=[sock])
    return 0
