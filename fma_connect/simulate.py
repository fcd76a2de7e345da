"""``fma-connect simulate``: thousands of federated clients in one process, over real HTTP.

N :class:`~fma_connect.aio.AsyncWebClient` s on one event loop run R rounds against the
reference server (started as a child process on 127.0.0.1, whose memory is then
measured) or against ``--url``. Each client registers, fetches the initial model, and
every round sends a synthetic update (the weights it received, nudged by its own noise)
and long-polls for the round's aggregate. The model's requirement is ``N`` updates, so a
round aggregates once every client has sent.

Per round it prints the p50/p99 latency of each call, updates per second (N over the
time from the round's start to its last stored update), body bytes up and down (counted
on the wire by aiohttp's tracing), errors, and the server's resident memory; at the end
it checks that every update was stored once and every client got every aggregate. The
exit status is 0 only when there were no errors and both checks hold.

The parts live in modules of their own: :mod:`.simulate_options` (the options and the
command's flags, the synthetic model), :mod:`.simulate_clients` (the clients, their
rounds and counters, the progress bar), :mod:`.simulate_service` (the embedded server,
the model it creates, the end checks) and :mod:`.simulate_reports` (the figures and how
they print). This module runs them, and its public names are importable from it.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from contextlib import ExitStack
from typing import TextIO

from .exceptions import ConfigurationError
from .simulate_clients import Simulation
from .simulate_options import SimulateOptions, add_arguments
from .simulate_reports import Outcome, RoundReport
from .simulate_service import create_model, embedded_server, verify

__all__ = ["Outcome", "RoundReport", "SimulateOptions", "add_arguments", "main", "simulate"]


def simulate(options: SimulateOptions, out: TextIO | None = None) -> Outcome:
    """Run a simulation, printing each round's figures to ``out`` (default stdout).

    Raises:
        ConfigurationError: the options are impossible (e.g. ``url`` without ``token``).
        FMAConnectError: the service could not be set up (the model not created).
    """
    _check(options)
    out = sys.stdout if out is None else out  # looked up now: a caller may have replaced it
    with ExitStack() as stack:
        server_pid: int | None = None
        if options.url is None:
            url, token, server_pid = stack.enter_context(embedded_server(options.clients))
        else:
            url, token = options.url, options.token or ""
        model = create_model(url, token, options)
        print(
            f"simulate: {options.clients} clients, {options.rounds} rounds, "
            f"{options.model_params} parameters ({options.codec}), model {model} at {url}",
            file=out,
        )
        run = Simulation(options, url, model, server_pid, out)
        rounds = asyncio.run(run.run())
        outcome = verify(options, url, token, model, rounds, run)
    _print_outcome(outcome, out)
    return outcome


def _check(options: SimulateOptions) -> None:
    if options.clients < 1 or options.rounds < 1 or options.model_params < 1:
        raise ConfigurationError(
            "clients, rounds and model_params must be at least 1, got "
            f"{options.clients}, {options.rounds}, {options.model_params}"
        )
    if options.url is not None and not options.token:
        raise ConfigurationError(
            "simulate --url needs the service's admin --token (or $FMA_CONNECT_ADMIN_TOKEN) "
            "to create the model it runs"
        )


def _print_outcome(outcome: Outcome, out: TextIO) -> None:
    for line in outcome.detail:
        print(line, file=out)
    print(f"errors: {outcome.errors}; {'OK' if outcome.ok else 'FAILED'}", file=out, flush=True)


def main(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run ``fma-connect simulate``; 0 when it ran clean and the checks hold."""
    try:
        import aiohttp  # noqa: F401  (checked here for a clear message)
    except ImportError:
        raise ConfigurationError(
            "simulate needs aiohttp: pip install 'fma-connect[aio,server]'"
        ) from None
    options = SimulateOptions(
        clients=args.clients,
        rounds=args.rounds,
        model_params=args.model_params,
        codec=args.codec,
        url=args.url,
        token=args.token,
        wait=args.wait,
        progress=not args.no_progress,
    )
    return 0 if simulate(options, out).ok else 1
