"""``fma-connect keys ...`` (a client's key pair) and the admin's identity actions
(``fma-connect admin enrolment-token / allow-key / disallow-key / allowed-keys /
client-keys / revoke / verify``, ``create-model --enrolment``); docs/SECURITY.md.

:func:`add_commands` hangs them on the parsers :mod:`fma_connect.cli` and
:mod:`fma_connect.cli_admin` build.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .cli_options import _action, add_client_tls

if TYPE_CHECKING:
    from typing import TypeAlias

    Parsers: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]

__all__ = ["TOKEN_ENV", "add_commands", "verify_report"]

#: Where ``fma-connect keys enrol`` finds the enrolment token without ``--token``.
TOKEN_ENV = "FMA_CONNECT_ENROLMENT_TOKEN"


def add_commands(commands: Parsers, admin_actions: Parsers, create_model: Any) -> None:
    """Add ``keys`` to ``commands``, the identity actions to ``admin_actions`` and
    ``--enrolment`` to the ``create_model`` parser."""
    create_model.add_argument(
        "--enrolment",
        choices=("open", "token", "keys"),
        default=None,
        help="(reference server) how clients join: open (default: anyone, as the stock "
        "service), token (a one-time token from `admin enrolment-token`) or keys (a key on "
        "the model's allow-list, `admin allow-key`); see docs/SECURITY.md",
    )
    _add_keys(commands)
    _add_admin(admin_actions)


# -- fma-connect keys --------------------------------------------------------------------


def _add_keys(commands: Parsers) -> None:
    keys = commands.add_parser(
        "keys",
        help="a federated client's Ed25519 key pair: create, show, enrol, rotate",
        description="A federated client's Ed25519 key pair (docs/SECURITY.md). Needs "
        "fma-connect[identity].",
    )
    actions = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    create = _action(actions, "create", "write a new private key (0600) and print its public key")
    create.add_argument("path", help="the private key file to write (never overwritten)")
    create.set_defaults(func=_cmd_create)
    show = _action(actions, "show", "print the public key and key id of a private key file")
    show.add_argument("path")
    show.set_defaults(func=_cmd_show)
    enrol = _action(
        actions,
        "enrol",
        "bind a key to a client (a new one without --uuid) and join a model; print its UUID",
    )
    enrol.add_argument("path", help="the client's private key file")
    enrol.add_argument("--model", type=int, required=True, help="the federated model's id")
    enrol.add_argument(
        "--token",
        default=None,
        help=f"the model's one-time enrolment token (default ${TOKEN_ENV}; an option is "
        "seen by other users of the machine in the process list: prefer the variable or "
        "--token-stdin)",
    )
    enrol.add_argument(
        "--token-stdin", action="store_true", help="read the token from the first line of stdin"
    )
    enrol.add_argument("--uuid", default=None, help="the client's UUID, if it has one")
    enrol.add_argument("--url", default=None, help="service URL (default $FMA_CONNECT_URL)")
    add_client_tls(enrol)
    enrol.set_defaults(func=_cmd_enrol)
    rotate = _action(
        actions,
        "rotate",
        "replace a client's key: the old key signs the request, the new one proves it is held",
    )
    rotate.add_argument("old", help="the client's current private key file")
    rotate.add_argument("new", help="the new private key file (from `keys create`)")
    rotate.add_argument("--uuid", required=True, help="the client's UUID")
    rotate.add_argument("--url", default=None, help="service URL (default $FMA_CONNECT_URL)")
    add_client_tls(rotate)
    rotate.set_defaults(func=_cmd_rotate)


def _tls(args: argparse.Namespace) -> dict[str, Any]:
    """The ``verify=`` and ``cert=`` of a client, from ``--cacert`` and ``--cert``."""
    cacert = getattr(args, "cacert", None)
    cert = getattr(args, "cert", None)
    return {"verify": True if cacert is None else str(cacert), "cert": cert and str(cert)}


def _enrolment_token(args: argparse.Namespace) -> str | None:
    """The token of ``keys enrol``: ``--token``, else stdin (``--token-stdin``), else the
    environment (None: none given, for a model that needs none)."""
    if args.token_stdin:
        line = sys.stdin.readline().strip()
        if not line:
            raise SystemExit("error: --token-stdin: stdin gave no token")
        return line
    return args.token or os.environ.get(TOKEN_ENV) or None


def _cmd_create(args: argparse.Namespace) -> int:
    from .identity import ClientKey

    key = ClientKey.generate()
    key.save(args.path)
    _print({"path": args.path, "key_id": key.key_id, "public_key": key.public_key})
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    from .identity import ClientKey

    key = ClientKey.load(args.path)
    _print({"path": args.path, "key_id": key.key_id, "public_key": key.public_key})
    return 0


def _cmd_enrol(args: argparse.Namespace) -> int:
    from .clients import WebClient
    from .identity import ClientKey

    key = ClientKey.load(args.path)
    token = _enrolment_token(args)
    with WebClient(args.model, args.uuid, args.url, identity=key, **_tls(args)) as client:
        uuid = client.enrol(token=token)
    _print({"uuid": uuid, "key_id": key.key_id, "federated_model": args.model})
    return 0


def _cmd_rotate(args: argparse.Namespace) -> int:
    from .clients import WebClient
    from .identity import ClientKey

    old, new = ClientKey.load(args.old), ClientKey.load(args.new)
    # Rotation is the client's, not a model's: no model route is called.
    with WebClient(1, args.uuid, args.url, identity=old, **_tls(args)) as client:
        key_id = client.rotate_key(new)
    _print({"uuid": args.uuid, "key_id": key_id, "previous": old.key_id})
    return 0


# -- fma-connect admin ... -----------------------------------------------------------------


def _add_admin(actions: Parsers) -> None:
    token = _action(actions, "enrolment-token", "issue a one-time enrolment token for a model")
    token.add_argument("model_id", type=int)
    token.add_argument(
        "--expires-in", type=float, default=None, metavar="SECONDS", help="default: until used"
    )
    token.add_argument(
        "--client",
        default=None,
        metavar="UUID",
        help="bind the token to this existing client (needed to give a key to a client "
        "that has none: never enrolled, or its keys revoked)",
    )
    token.set_defaults(
        func=_admin(lambda a, args: a.enrolment_token(args.model_id, args.expires_in, args.client))
    )
    allow = _action(actions, "allow-key", "put a client public key on a model's allow-list")
    allow.add_argument("model_id", type=int)
    allow.add_argument("public_key", help="base64, as `fma-connect keys create` prints it")
    allow.set_defaults(func=_admin(lambda a, args: a.allow_key(args.model_id, args.public_key)))
    disallow = _action(
        actions, "disallow-key", "take a key off a model's allow-list (refused there at once)"
    )
    disallow.add_argument("model_id", type=int)
    disallow.add_argument("key_id")
    disallow.set_defaults(func=_admin(_disallow))
    listed = _action(actions, "allowed-keys", "list a model's allow-listed keys")
    listed.add_argument("model_id", type=int)
    listed.set_defaults(func=_admin(lambda a, args: a.allowed_keys(args.model_id)))
    keys = _action(actions, "client-keys", "list a client's keys (active, rotated, revoked)")
    keys.add_argument("uuid")
    keys.set_defaults(func=_admin(lambda a, args: a.client_keys(args.uuid)))
    revoke = _action(
        actions,
        "revoke",
        "revoke a client (every route refuses it at once), or with --key one of its keys",
    )
    revoke.add_argument("uuid")
    revoke.add_argument("--key", default=None, metavar="KEY_ID", help="revoke only this key")
    revoke.set_defaults(func=_admin(lambda a, args: a.revoke(args.uuid, args.key)))
    verify = _action(
        actions,
        "verify",
        "re-read every stored update of a model, check digests and signatures and each "
        "aggregate's inputs; exit 1 if anything fails",
    )
    verify.add_argument("model_id", type=int)
    verify.add_argument("--json", action="store_true", help="print the whole report as JSON")
    verify.set_defaults(func=_cmd_verify)


def _disallow(admin: Any, args: argparse.Namespace) -> object:
    admin.disallow_key(args.model_id, args.key_id)
    return {"disallowed": args.key_id, "federated_model": args.model_id}


def _admin(
    action: Callable[[Any, argparse.Namespace], object],
) -> Callable[[argparse.Namespace], int]:
    """A command that runs ``action(admin_client, args)`` and prints its answer as JSON."""

    def run(args: argparse.Namespace) -> int:
        status, result = _with_admin(args, action)
        if status == 0:
            _print(result)
        return status

    return run


def _with_admin(
    args: argparse.Namespace, action: Callable[[Any, argparse.Namespace], object]
) -> tuple[int, object]:
    from .admin import AdminClient
    from .exceptions import FMAConnectError

    token = args.token or os.environ.get("FMA_CONNECT_ADMIN_TOKEN")
    if not token:
        print("error: give --token or set FMA_CONNECT_ADMIN_TOKEN", file=sys.stderr)
        return 2, None
    try:
        with AdminClient(args.url, token, **_tls(args)) as admin:
            return 0, action(admin, args)
    except (FMAConnectError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1, None


def _cmd_verify(args: argparse.Namespace) -> int:
    status, report = _with_admin(args, lambda a, parsed: a.verify(parsed.model_id))
    if status != 0:
        return status
    assert isinstance(report, dict)
    if args.json:
        _print(report)
    else:
        print(verify_report(report))
    return 0 if report.get("ok") else 1


def verify_report(report: dict[str, Any]) -> str:
    """The lines ``admin verify`` prints: one per problem, then a summary."""
    lines = []
    for problem in report.get("problems", []):
        what = "update" if "update" in problem else "aggregate"
        lines.append(f"FAIL {what} {problem.get(what)}: {problem.get('problem')}")
    for note in report.get("notes", []):
        lines.append(f"note update {note.get('update')}: {note.get('note')}")
    verdict = "OK" if report.get("ok") else f"{len(report.get('problems', []))} problem(s)"
    lines.append(
        f"model {report.get('federated_model')} (enrolment {report.get('enrolment')}): "
        f"{report.get('updates')} updates ({report.get('signed')} signed, "
        f"{report.get('unsigned')} unsigned), {report.get('aggregates')} aggregates: {verdict}"
    )
    return "\n".join(lines)


def _print(value: object) -> None:
    print(json.dumps(value, indent=2))
