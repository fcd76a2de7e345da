"""The reference server's commands, run on its machine: ``fma-connect serve`` (its
options and handler, and the argument types they use) and ``fma-connect admin-token``
(the admin token ``serve`` stored). Both need the ``server`` extra.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .cli_options import _at_least
from .settings import BLOBS_ENV, DATABASE_ENV, S3_ENDPOINT_URL_ENV

__all__ = ["LOG_LEVELS", "add_admin_token_command", "add_serve_command"]


def _cmd_serve(args: argparse.Namespace) -> int:
    try:
        from .server.serve import serve
    except ImportError as exc:
        return _without_server_extra(exc)
    limits = {
        name: getattr(args, name)
        for name in (
            "max_body_bytes",
            "max_tensors",
            "header_timeout",
            "idle_timeout",
            "max_connections",
            "max_connections_per_client",
            "max_header_bytes",
            "upload_expiry",
            "upload_quota",
            "database",
            "blobs",
            "s3_endpoint_url",
            "round_lease",
            "tls_cert",
            "tls_key",
            "tls_client_ca",
        )
        if getattr(args, name) is not None
    }
    return serve(
        args.host,
        args.port,
        args.data_dir,
        auto_aggregate=args.auto_aggregate,
        log_level=args.log_level,
        **limits,
    )


#: uvicorn's log levels (uvicorn.config.LOG_LEVELS), listed here so --help needs no uvicorn.
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


def _port(text: str) -> int:
    """``--port``: 0-65535, 0 for any free port."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0-65535 (0: any free port), got {value}")
    return value


def add_serve_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``serve`` to ``commands``."""
    serve = commands.add_parser(
        "serve",
        help="run the reference FMA server",
        description="Run the reference FMA server in this process until interrupted.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument(
        "--port", type=_port, default=8000, help="port, 0-65535 (default 8000; 0: any free)"
    )
    serve.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="database and payload directory (default $FMA_CONNECT_DATA_DIR or ./fma-connect-data)",
    )
    serve.add_argument(
        "--auto-aggregate",
        choices=("sync", "background", "off"),
        default="sync",
        help="when a model's requirement is met: aggregate in the request (default), "
        "in a background thread, or only on an admin trigger",
    )
    serve.add_argument(
        "--log-level",
        default="info",
        type=str.lower,
        choices=LOG_LEVELS,
        help="uvicorn log level (default info)",
    )
    serve.add_argument(
        "--max-body-bytes",
        type=_at_least(1),
        default=None,
        help="largest request body; larger ones get 413 (default 16 GiB)",
    )
    serve.add_argument(
        "--max-tensors",
        type=_at_least(1),
        default=None,
        help="most tensors in one update; more get 400 (default 20000)",
    )
    serve.add_argument(
        "--header-timeout",
        type=_seconds,
        default=None,
        help="seconds a request head may take to arrive whole; then 408 (default 30)",
    )
    serve.add_argument(
        "--idle-timeout",
        type=_seconds,
        default=None,
        help="seconds of silence allowed while a request or response body moves: a "
        "stalled upload gets 408, a download the client stops reading is cut (default 60)",
    )
    serve.add_argument(
        "--max-connections",
        type=_at_least(1),
        default=None,
        help="most connections at once; more get 503 with Retry-After (default: half "
        "the open-file limit less 64, at most 1024)",
    )
    serve.add_argument(
        "--max-connections-per-client",
        type=_at_least(0),
        default=None,
        help="the same per client address, 0 for none (default 64; behind a reverse "
        "proxy every connection comes from the proxy)",
    )
    serve.add_argument(
        "--max-header-bytes",
        type=_at_least(1024),
        default=None,
        help="largest request head; larger ones get 431 (default 16384)",
    )
    serve.add_argument(
        "--upload-expiry",
        type=_seconds,
        default=None,
        help="seconds a resumable upload lives after its last chunk; then it is refused "
        "and its bytes deleted (default 86400)",
    )
    serve.add_argument(
        "--upload-quota",
        type=_at_least(1),
        default=None,
        help="most bytes one client's open resumable uploads may declare in all "
        "(default: twice --max-body-bytes)",
    )
    serve.add_argument(
        "--database",
        default=None,
        metavar="URL",
        help="the metadata database: postgresql://user:password@host:port/name, which "
        "any number of replicas behind one load balancer share (give each the same URL, "
        f"--blobs and --data-dir or bucket; docs/SCALING.md) (default ${DATABASE_ENV}, "
        "else SQLite in --data-dir, one server per directory)",
    )
    serve.add_argument(
        "--blobs",
        default=None,
        metavar="URL",
        help=f"where payloads live: s3://bucket/prefix (default ${BLOBS_ENV}, else "
        "<data-dir>/blobs)",
    )
    serve.add_argument(
        "--s3-endpoint-url",
        default=None,
        metavar="URL",
        help="the S3-compatible object store of --blobs (MinIO, Ceph, R2, ...) "
        f"(default ${S3_ENDPOINT_URL_ENV}, else AWS)",
    )
    serve.add_argument(
        "--round-lease",
        type=_seconds,
        default=None,
        help="seconds a replica's claim on a running round lasts unless renewed: how "
        "soon another replica completes the round of one that died (default 30)",
    )
    tls = serve.add_argument_group("TLS (docs/SECURITY.md)")
    tls.add_argument(
        "--tls-cert",
        type=Path,
        default=None,
        metavar="FILE",
        help="serve HTTPS with this PEM certificate chain (leaf first; it may hold the key)",
    )
    tls.add_argument(
        "--tls-key",
        type=Path,
        default=None,
        metavar="FILE",
        help="the PEM private key of --tls-cert, when that file does not hold it",
    )
    tls.add_argument(
        "--tls-client-ca",
        type=Path,
        default=None,
        metavar="FILE",
        help="mutual TLS: accept only connections whose client certificate this PEM CA "
        "file's CAs signed (clients pass cert=)",
    )
    serve.set_defaults(func=_cmd_serve)


def add_admin_token_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``admin-token`` to ``commands``."""
    token = commands.add_parser(
        "admin-token",
        help="print the admin token stored in a server's data directory",
        description="Print the admin token a server stored in its data directory (the one "
        "'serve' printed on its first start). Starting a server with "
        "FMA_CONNECT_ADMIN_TOKEN set replaces the stored token with that one.",
    )
    token.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="the server's data directory (default $FMA_CONNECT_DATA_DIR or ./fma-connect-data)",
    )
    token.add_argument(
        "--database",
        default=None,
        metavar="URL",
        help=f"the server's PostgreSQL database, as serve --database (default ${DATABASE_ENV}; "
        "unset: the SQLite file in --data-dir)",
    )
    token.set_defaults(func=_cmd_admin_token)


def _cmd_admin_token(args: argparse.Namespace) -> int:
    try:
        from .server.datadir import DataDirError, read_admin_token
        from .server.serve import default_data_dir
    except ImportError as exc:
        return _without_server_extra(exc)
    try:
        print(read_admin_token(args.data_dir or default_data_dir(), args.database))
    except DataDirError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _without_server_extra(exc: ImportError) -> int:
    """Say that the server's extra is missing (``exc``: the import that failed); exit 2."""
    print(
        f"error: the server needs its extra ({exc}): pip install 'fma-connect[server]'",
        file=sys.stderr,
    )
    return 2


def _seconds(text: str) -> float:
    """``--header-timeout`` and the other durations: a positive, finite number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value
