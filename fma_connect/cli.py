"""The ``fma-connect`` command line.

Each subcommand is a function ``_cmd_<name>(args) -> int`` registered in :func:`_parser`,
which assembles the commands in the order ``--help`` lists them. The small commands that
hand over to a module of their own (``codecs``, ``demo``, ``bench``, ``simulate``) live
here; the others have modules:

- :mod:`fma_connect.cli_serve`: ``serve`` and ``admin-token``, run where the reference
  server runs;
- :mod:`fma_connect.cli_admin`: ``admin ACTION``, the admin API of a service;
- :mod:`fma_connect.cli_keys`: ``keys`` and the admin's identity actions;
- :mod:`fma_connect.cli_options`: the options and argument types they share.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence

from .cli_admin import add_admin_commands
from .cli_options import _at_least
from .cli_serve import add_admin_token_command, add_serve_command

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
    add_serve_command(commands)
    add_admin_commands(commands)  # and `keys` (cli_keys)
    add_admin_token_command(commands)
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
