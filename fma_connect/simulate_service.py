"""The service side of ``fma-connect simulate``: the reference server it starts (and the
open-file limit that server needs), the model it creates, and the end checks it makes on
the service (a part of :mod:`fma_connect.simulate`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .simulate_clients import Simulation
from .simulate_options import SimulateOptions, initial_weights
from .simulate_reports import Outcome, RoundReport

__all__ = ["create_model", "embedded_server", "verify"]

#: Connections the embedded server admits beyond two per client (admin, checks).
_SPARE_CONNECTIONS = 64


@contextmanager
def embedded_server(clients: int) -> Iterator[tuple[str, str, int]]:
    """The reference server in a child process, admitting every client's connection."""
    from .server.testing import running_server_process

    # The server holds long-polls on at most half its connections: twice the clients
    # lets every client's long-poll be held at once, each socket counted on both ends.
    connections = 2 * clients + _SPARE_CONNECTIONS
    _raise_file_limit(3 * connections + 256)
    with tempfile.TemporaryDirectory(prefix="fma-simulate-") as data:
        args = (
            "--max-connections",
            str(connections),
            # Every simulated client comes from 127.0.0.1: no cap per address.
            "--max-connections-per-client",
            "0",
        )
        with running_server_process(Path(data), args=args) as child:
            yield child.url, child.admin_token, child.process.pid


def _raise_file_limit(wanted: int) -> None:
    """Raise the open-file limit towards ``wanted`` (a socket per client, both ends)."""
    try:
        import resource
    except ImportError:  # not on Windows
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def create_model(url: str, token: str, options: SimulateOptions) -> int:
    from .admin import AdminClient

    # Plain lists in flattening (name) order: the initial model every client fetches.
    initial = [array.tolist() for _, array in sorted(initial_weights(options.model_params).items())]
    with AdminClient(url, token) as admin:
        created = admin.create_model(
            f"simulate-{options.clients}x{options.rounds}",
            requirement="require_x_updates",
            requirement_args=[options.clients],
            initial_model=initial,
        )
    return int(created["id"])


def verify(
    options: SimulateOptions,
    url: str,
    token: str,
    model: int,
    rounds: list[RoundReport],
    run: Simulation,
) -> Outcome:
    """Check on the service that every update was stored once and every aggregate reached
    every client."""
    from .admin import AdminClient

    detail: list[str] = []
    with AdminClient(url, token) as admin:
        aggregates = sorted(int(a["id"]) for a in admin.list_aggregates(model))
        registered = {row["uuid"]: row for row in admin.list_clients(model)}
    counts = [registered.get(uuid, {}).get("updates") for uuid in run.uuids if uuid]
    stored_once = len(counts) == options.clients and all(c == options.rounds for c in counts)
    total = sum(c or 0 for c in counts)
    detail.append(
        f"updates stored: {total} of {options.clients * options.rounds} "
        f"({'each client exactly ' + str(options.rounds) if stored_once else 'NOT once each'})"
    )
    all_received = len(aggregates) == options.rounds and all(
        got == aggregates for got in run.received
    )
    missing = sum(1 for got in run.received if got != aggregates)
    detail.append(
        f"aggregates: {len(aggregates)} made; "
        + ("every client got every one" if all_received else f"{missing} clients missed some")
    )
    return Outcome(options, rounds, aggregates, stored_once, all_received, detail)
