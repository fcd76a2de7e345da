"""What ``fma-connect simulate`` simulates: its options, as the library takes them and as
the command's flags, and the synthetic model they describe (a part of
:mod:`fma_connect.simulate`, which re-exports the public names).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

import numpy as np

__all__ = ["SimulateOptions", "add_arguments", "initial_weights"]


@dataclass(frozen=True)
class SimulateOptions:
    """What to simulate.

    Attributes:
        clients: How many clients (N).
        rounds: How many rounds (R).
        model_params: Parameters of the model (float32), in two tensors.
        codec: The clients' codec.
        url: A running service (None: start the reference server).
        token: Its admin token (creates the model; needed with ``url``).
        wait: Most seconds a client waits for a round's aggregate.
        progress: Draw a progress bar on stderr (when it is a terminal).
    """

    clients: int
    rounds: int
    model_params: int = 10_000
    codec: str = "msgpack"
    url: str | None = None
    token: str | None = None
    wait: float = 600.0
    progress: bool = True


def initial_weights(params: int) -> dict[str, np.ndarray]:
    bias = min(64, params // 2)
    return {
        "dense.b": np.zeros(bias, np.float32),
        "dense.w": np.zeros(params - bias, np.float32),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``simulate`` command's options."""

    def positive(text: str) -> int:
        value = int(text)
        if value < 1:
            raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
        return value

    parser.add_argument("--clients", type=positive, required=True, help="clients (N)")
    parser.add_argument("--rounds", type=positive, required=True, help="rounds (R)")
    parser.add_argument(
        "--model-params",
        type=positive,
        default=10_000,
        help="float32 parameters of the model (default 10000)",
    )
    parser.add_argument("--codec", default="msgpack", help="the clients' codec (default msgpack)")
    parser.add_argument(
        "--url",
        default=None,
        help="a running service (default: start the reference server on 127.0.0.1; "
        "its --max-connections must admit every client)",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("FMA_CONNECT_ADMIN_TOKEN"),
        help="the service's admin token, with --url (default $FMA_CONNECT_ADMIN_TOKEN)",
    )
    parser.add_argument(
        "--wait",
        type=float,
        default=600.0,
        help="most seconds a client waits for a round's aggregate (default 600)",
    )
    parser.add_argument("--no-progress", action="store_true", help="draw no progress bar")
