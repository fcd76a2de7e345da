"""The ``fma-connect`` command line.

Each subcommand is a function ``_cmd_<name>(args) -> int`` registered in :func:`_parser`.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence

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


def _parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="fma-connect", description="Federated Model Aggregation client toolkit."
    )
    parser.add_argument("--version", action="version", version=f"fma-connect {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    codecs = commands.add_parser("codecs", help="list the installed codecs and their plugins")
    codecs.set_defaults(func=_cmd_codecs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the process exit code."""
    args = _parser().parse_args(argv)
    status: int = args.func(args)
    return status
