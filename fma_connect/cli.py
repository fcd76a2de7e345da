"""The ``fma-connect`` command line.

Each subcommand is a function ``_cmd_<name>(args) -> int`` registered in :func:`_parser`.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from .settings import BLOBS_ENV, DATABASE_ENV, S3_ENDPOINT_URL_ENV

__all__ = ["main"]


def _cmd_codecs(args: argparse.Namespace) -> int:
    from .plugins import PluginWarning, build_codec_registry, plugin_manager

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PluginWarning)
        registry = build_codec_registry(plugin_manager())
    rows = [("name", "media type", "lossless", "JSON-native", "plugin", "distribution")]
    for info in registry:
        codec = info.codec
        dist = f"{info.distribution} {info.version}" if info.distribution else "-"
        rows.append(
            (
                codec.name,
                codec.media_type,
                "yes" if codec.lossless else "no",
                "yes" if codec.json_native else "no",
                info.plugin,
                dist,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr)
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    try:
        from .server.serve import serve
    except ImportError as exc:
        print(
            f"error: the server needs its extra ({exc}): pip install 'fma-connect[server]'",
            file=sys.stderr,
        )
        return 2
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


def _cmd_admin(args: argparse.Namespace) -> int:
    import json
    import os

    from .admin import AdminClient
    from .exceptions import FMAConnectError

    token = args.token or os.environ.get("FMA_CONNECT_ADMIN_TOKEN")
    if not token:
        print("error: give --token or set FMA_CONNECT_ADMIN_TOKEN", file=sys.stderr)
        return 2
    try:
        verify = True if args.cacert is None else args.cacert
        with AdminClient(args.url, token, verify=verify, cert=args.cert) as admin:
            if args.admin_command == "create-model":
                initial = None
                if args.initial_model is not None:
                    initial = _read_initial_model(args.initial_model)
                result: object = admin.create_model(
                    args.name,
                    aggregator=args.aggregator,
                    requirement=args.requirement,
                    requirement_args=args.requirement_args,
                    developer=args.developer,
                    initial_model=initial,
                    aggregate_fraction=args.aggregate_fraction,
                    aggregate_values=args.aggregate_values,
                    aggregator_args=args.aggregator_args,
                    round_deadline=args.round_deadline,
                    round_quorum=args.round_quorum,
                    min_clients=args.min_clients,
                    drop_after_missed=args.drop_after_missed,
                    enrolment=args.enrolment,
                )
            elif args.admin_command == "models":
                result = admin.list_models()
            elif args.admin_command == "delete-model":
                admin.delete_model(args.model_id)
                result = {"deleted": args.model_id}
            elif args.admin_command == "updates":
                result = [_with_status_name(row) for row in admin.list_updates(args.model_id)]
            elif args.admin_command == "aggregates":
                result = admin.list_aggregates(args.model_id)
            elif args.admin_command == "aggregate":
                result = admin.aggregate(args.model_id)
            elif args.admin_command == "clients":
                result = admin.list_clients(args.model_id)
            elif args.admin_command == "remove-client":
                admin.remove_client(args.model_id, args.uuid)
                result = {"removed": args.uuid, "federated_model": args.model_id}
            else:
                result = admin.publish(args.aggregate_id, args.version)
    except (FMAConnectError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0


def _with_status_name(update: dict[str, object]) -> dict[str, object]:
    """The update with ``status_name`` (e.g. ``"COMPLETE"``) right after its ``status`` number."""
    from .admin import UpdateStatus

    shown: dict[str, object] = {}
    for key, value in update.items():
        shown[key] = value
        if key == "status" and isinstance(value, UpdateStatus):
            shown["status_name"] = value.name
    return shown


def _json_object(text: str) -> dict[str, object]:
    """``--aggregator-args``: a JSON object (argparse reports the error otherwise)."""
    import json

    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r} ({exc})") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            f"expected a JSON object like '{{\"trim\": 0.2}}', got {text!r}"
        )
    return value


def _read_initial_model(path: str) -> list[object]:
    """The layers in ``--initial-model FILE``: a JSON list, one entry per layer."""
    import json

    from .exceptions import ConfigurationError

    with open(path, encoding="utf-8") as file:
        try:
            layers = json.load(file)
        except json.JSONDecodeError as exc:
            raise ConfigurationError(
                f"--initial-model {path}: expected a JSON list of layers, but the file is not "
                f"valid JSON ({exc})"
            ) from exc
    if not isinstance(layers, list):
        kind = {dict: "an object", str: "a string", bool: "a boolean"}.get(
            type(layers), "a number" if layers is not None else "null"
        )
        raise ConfigurationError(
            f"--initial-model {path}: expected a JSON list of layers such as "
            f"[[0.1, 0.2], [0.3]], got {kind}"
        )
    return layers


#: uvicorn's log levels (uvicorn.config.LOG_LEVELS), listed here so --help needs no uvicorn.
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0-65535 (0: any free port), got {value}")
    return value


def _add_server_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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

    admin = commands.add_parser(
        "admin",
        help="admin actions on an FMA service",
        description="Admin actions on an FMA service (the reference server or the stock one), "
        "authenticated by the admin token.",
    )
    admin.add_argument("--url", default=None, help="service URL (default $FMA_CONNECT_URL)")
    admin.add_argument(
        "--token", default=None, help="admin token (default $FMA_CONNECT_ADMIN_TOKEN)"
    )
    add_client_tls(admin)
    admin.set_defaults(func=_cmd_admin)
    actions = admin.add_subparsers(dest="admin_command", required=True, metavar="ACTION")
    create = _action(actions, "create-model", "create a federated model and print it")
    create.add_argument("name")
    create.add_argument(
        "--aggregator",
        default="avg_values_if_data",
        help="avg_values_if_data (default), average_layers, or on the reference server any "
        "installed aggregator: fed_avg, fed_adam, fed_yogi, median, trimmed_mean, plugins'",
    )
    create.add_argument(
        "--aggregator-args",
        type=_json_object,
        metavar="JSON",
        help="(reference server) the aggregator's arguments, e.g. '{\"trim\": 0.2}' for "
        "trimmed_mean or '{\"eta\": 0.1}' for fed_adam (see docs/ROUNDS.md)",
    )
    create.add_argument(
        "--requirement",
        choices=("all_clients", "require_x_updates"),
        help="when a round runs: after an update from every registered client (all_clients) "
        "or after X updates (require_x_updates X). Default: none, so every single update "
        "makes its own aggregate; use all_clients or require_x_updates for federated averaging",
    )
    create.add_argument(
        "--requirement-args",
        type=int,
        nargs="*",
        default=None,
        help="X for require_x_updates, e.g. 3",
    )
    create.add_argument("--developer", type=int, default=1, help="developer user id (default 1)")
    create.add_argument("--initial-model", metavar="FILE", help="JSON file: a list of layers")
    create.add_argument(
        "--aggregate-fraction",
        type=float,
        metavar="F",
        help="(reference server) each aggregate changes only this share of each float "
        "tensor's entries, in (0, 1]; the rest carries to the next round, and delta/sparse "
        "clients download about that share of the model. Default: the full mean",
    )
    create.add_argument(
        "--aggregate-values",
        metavar="CODING",
        help="how those changes are coded: float32 (default), float16, q2..q8 or ternary",
    )
    create.add_argument(
        "--round-deadline",
        type=float,
        metavar="SECONDS",
        help="(reference server) a round runs this long after its first update with what "
        "arrived, if --round-quorum clients sent it (docs/ROUNDS.md)",
    )
    create.add_argument(
        "--round-quorum",
        type=int,
        metavar="N",
        help="the fewest clients a deadline round takes (default 1)",
    )
    create.add_argument(
        "--min-clients",
        type=int,
        metavar="N",
        help="(reference server) no automatic round while fewer clients are registered",
    )
    create.add_argument(
        "--drop-after-missed",
        type=int,
        metavar="K",
        help="(reference server) all_clients stops waiting for a client that missed K rounds "
        "in a row, until it sends an update again",
    )
    _action(actions, "models", "list the federated models")
    delete = _action(
        actions, "delete-model", "delete a model with its updates, aggregates and artifacts"
    )
    delete.add_argument("model_id", type=int)
    updates = _action(actions, "updates", "list a model's updates (status and reason of each)")
    updates.epilog = (
        'Each update\'s "status" is the service\'s number and "status_name" its name: '
        "0 PENDING (waiting for a round), 1 RUNNING (in a round now), 2 COMPLETE (averaged "
        "into an aggregate), 3 FAILED (the stock service could not aggregate it; the "
        "reference server puts a failed round's updates back to PENDING), 4 INVALID "
        '(refused by a round; "status_reason" says why).'
    )
    updates.add_argument("model_id", type=int)
    aggregates = _action(actions, "aggregates", "list a model's aggregates")
    aggregates.add_argument("model_id", type=int)
    trigger = _action(
        actions,
        "aggregate",
        "run an aggregation round of a model's pending updates now, whether or not the "
        "model's requirement is met (reference server only)",
    )
    trigger.add_argument("model_id", type=int)
    clients = _action(
        actions,
        "clients",
        "list the clients registered with a model: when each registered and last sent an "
        "update, and how many of its updates are in each status (reference server only)",
    )
    clients.add_argument("model_id", type=int)
    remove = _action(
        actions,
        "remove-client",
        "remove a client's registration with a model: its updates stay, its pending ones "
        "no longer count toward a round, and it is refused until it registers again "
        "(reference server only)",
    )
    remove.add_argument("model_id", type=int)
    remove.add_argument("uuid", help="the client's UUID (see the clients action)")
    publish = _action(actions, "publish", "publish an aggregate as its model's current artifact")
    publish.add_argument("aggregate_id", type=int)
    publish.add_argument("version")
    from .cli_keys import add_commands  # `keys`, the admin's identity actions (SECURITY.md)

    add_commands(commands, actions, create)

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


def add_client_tls(parser: argparse.ArgumentParser) -> None:
    """``--cacert`` and ``--cert``: a command's ``verify=`` and ``cert=`` (``admin``,
    ``keys enrol``, ``keys rotate``)."""
    parser.add_argument(
        "--cacert",
        type=Path,
        default=None,
        metavar="FILE",
        help="check an https service's certificate against this PEM CA file (default: the "
        "default CAs, or $REQUESTS_CA_BUNDLE)",
    )
    parser.add_argument(
        "--cert",
        type=Path,
        default=None,
        metavar="FILE",
        help="a PEM client certificate and key, for a service with mutual TLS",
    )


def _action(
    actions: argparse._SubParsersAction[argparse.ArgumentParser], name: str, text: str
) -> argparse.ArgumentParser:
    """An ``admin`` action whose one-line help is also its --help description."""
    return actions.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")


def _cmd_admin_token(args: argparse.Namespace) -> int:
    try:
        from .server.datadir import DataDirError, read_admin_token
        from .server.serve import default_data_dir
    except ImportError as exc:
        print(
            f"error: the server needs its extra ({exc}): pip install 'fma-connect[server]'",
            file=sys.stderr,
        )
        return 2
    try:
        print(read_admin_token(args.data_dir or default_data_dir(), args.database))
    except DataDirError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    result = run_demo(
        args.clients, args.rounds, args.codec, framework=args.framework, seed=args.seed
    )
    # The demo's point: the federation beats any client alone; say so in the exit code too.
    if result.final_accuracy > result.best_single_client:
        return 0
    print("fma-connect demo: the federation did not beat the best single client", file=sys.stderr)
    return 1


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def _at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def _add_demo_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = commands.add_parser(
        "demo",
        help="run a federation on this machine (embedded server, digits dataset)",
        description="Run a federation on this machine: clients train on shares of "
        "scikit-learn's digits and aggregate through an embedded reference server.",
    )
    demo.add_argument(
        "--clients", type=_at_least(2), default=3, help="federated clients, 2 or more (default 3)"
    )
    demo.add_argument("--rounds", type=_at_least(1), default=5, help="federated rounds (default 5)")
    demo.add_argument("--codec", default="json", help="codec of the updates (default json)")
    demo.add_argument(
        "--framework",
        default="numpy",
        choices=["numpy", "torch"],
        help="what the clients train with (default numpy)",
    )
    demo.add_argument("--seed", type=int, default=0, help="seed of the data split (default 0)")
    demo.set_defaults(func=_cmd_demo)


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench import run_bench

    return run_bench(args, " ".join(["fma-connect", *args.argv]))


def _add_bench_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from .bench import add_arguments

    bench = commands.add_parser(
        "bench",
        help="benchmark codecs, transfers and round trips (markdown tables, PNG chart)",
        description="Benchmark every installed codec against baselines and ceilings.",
    )
    add_arguments(bench)
    bench.set_defaults(func=_cmd_bench)


def _cmd_simulate(args: argparse.Namespace) -> int:
    from .simulate import main as simulate_main

    return simulate_main(args)


def _add_simulate_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from .simulate import add_arguments

    simulate = commands.add_parser(
        "simulate",
        help="run N asyncio clients for R rounds through real HTTP (latency, updates/s)",
        description="Run N AsyncWebClients in one process for R rounds against the "
        "reference server (or --url): per round the p50/p99 latency of each call, updates "
        "per second, bytes, errors and the server's memory; then check that every update "
        "was stored once and every client got every aggregate (docs/ASYNC.md).",
    )
    add_arguments(simulate)
    simulate.set_defaults(func=_cmd_simulate)


def _parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="fma-connect", description="Federated Model Aggregation client toolkit."
    )
    parser.add_argument("--version", action="version", version=f"fma-connect {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    codecs = commands.add_parser(
        "codecs",
        help="list the installed codecs and their plugins",
        description="List the installed codecs: media type, losslessness, and the plugin "
        "and distribution that provide each.",
    )
    codecs.set_defaults(func=_cmd_codecs)
    _add_server_commands(commands)
    _add_demo_command(commands)
    _add_bench_command(commands)
    _add_simulate_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the process exit code."""
    from .exceptions import FMAConnectError

    args = _parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        status: int = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
    except FMAConnectError as exc:
        print(f"fma-connect {args.command}: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader went away (``| head``): stop quietly. Point stdout at devnull so the
        # interpreter's final flush does not complain about the closed pipe either.
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 1
    return status
