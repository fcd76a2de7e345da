"""``fma-connect admin ACTION``: the admin's actions on an FMA service (the reference
server or the stock one) over its admin API, and their parsers. The identity actions
and ``keys`` are :mod:`fma_connect.cli_keys`'s, hung on the same parsers.
"""

from __future__ import annotations

import argparse
import sys

from . import cli_keys
from .cli_options import _action, add_client_tls

__all__ = ["add_admin_commands"]


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


def add_admin_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``admin`` and its actions to ``commands``, then ``keys`` and the identity
    actions (:func:`fma_connect.cli_keys.add_commands`)."""
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
    # `keys`, the admin's identity actions (SECURITY.md)
    cli_keys.add_commands(commands, actions, create)
