"""What several commands' parsers share: the client TLS options (``--cacert``,
``--cert``), the parser of one ``admin`` or ``keys`` action, and the integer argument
type with a floor.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

__all__ = ["add_client_tls"]


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
    """An ``admin`` or ``keys`` action whose one-line help is also its --help description."""
    return actions.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")


def _at_least(minimum: int) -> Callable[[str], int]:
    """An argument type: an integer no smaller than ``minimum`` (argparse says why not)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse
