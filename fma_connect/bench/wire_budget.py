"""The least CPU a server ingest needs on this machine, and the best ratio that allows.

An upload into ``fma-connect serve`` must, whatever the code that does it: hash every
byte with BLAKE3 twice (the client's chunk digests, the server's check of each chunk),
run the codec's crc32 twice (the client's encode, the server's check at completion),
check that every value is finite (the server averages updates), move the bytes through
the loopback socket (a copy at each end) and write them into the page cache (the
durable ceiling's own work). :func:`ingest_budget` times each of these alone, as CPU
seconds of this process; spread over every core at once, with nothing else running and
no framing at all, their sum is the shortest an ingest can take here.
:func:`budget_row` sets that against the durable ceiling of the same run: the best
ratio any implementation of this design could reach on this machine.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import blake3
import numpy as np

from ..codecs import msgpack_numpy
from ..server.mean import all_finite
from .wire import durable_write, prime_memory, send_sliced
from .wire_breakdown import mbs, rate_text, table
from .wire_rows import Results, Row

__all__ = [
    "INGEST_TARGET",
    "PASSES",
    "budget_row",
    "budget_section",
    "cores",
    "ingest_budget",
    "least_budget",
    "least_seconds",
]

#: The ingest's target: at least this ratio to the durable write (issue 13).
INGEST_TARGET = 0.8
#: How many times an ingest does each stage of :func:`ingest_budget`.
PASSES = {
    "BLAKE3, one pass": 2,
    "crc32, one pass": 2,
    "finite check": 1,
    "loopback transfer, both ends": 1,
    "durable write": 1,
}
#: The slices hashed at a time (as a chunk is, by the client and by the server).
_HASH_SLICE = 8 << 20
#: The reads of the loopback transfer's receiving end (the server's body reads).
_RECEIVE = 4 << 20


def cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0))


def _cpu(work: Callable[[], object]) -> float:
    """CPU seconds of this process (every thread) that ``work`` took."""
    before = time.process_time()
    work()
    return time.process_time() - before


def _hash(body: memoryview) -> None:
    hasher = blake3.blake3()  # one thread: the server hashes a chunk on one
    for at in range(0, body.nbytes, _HASH_SLICE):
        hasher.update(body[at : at + _HASH_SLICE])


def _transfer(body: memoryview) -> None:
    """Send ``body`` through a loopback TCP connection and receive it at the other end."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        sender = socket.create_connection(listener.getsockname())
        receiver, _ = listener.accept()
    with sender, receiver:
        thread = threading.Thread(target=send_sliced, args=(sender, body))
        thread.start()
        scratch = memoryview(bytearray(_RECEIVE))
        got = 0
        while got < body.nbytes:
            n = receiver.recv_into(scratch)
            if not n:
                raise ConnectionError(f"the transfer ended after {got} of {body.nbytes} bytes")
            got += n
        thread.join()


def ingest_budget(arrays: Sequence[np.ndarray], body: Any, directory: Path) -> dict[str, float]:
    """CPU seconds of each stage an ingest must do once (:data:`PASSES` says how often).

    Args:
        arrays: The update's tensors (the finite check's input).
        body: Their encoded bytes, as the client sends them.
        directory: Where the durable write goes (the server's blob directory).
    """
    view = memoryview(body).cast("B")
    removals: list[Callable[[], None]] = []
    stages = {
        "BLAKE3, one pass": _cpu(lambda: _hash(view)),
        "crc32, one pass": _cpu(lambda: msgpack_numpy.crc32(view)),
        "finite check": _cpu(lambda: [all_finite(a) for a in arrays]),
        "loopback transfer, both ends": _cpu(lambda: _transfer(view)),
        "durable write": _cpu(lambda: removals.append(durable_write(directory, view))),
    }
    for remove in removals:
        remove()
    return stages


def least_budget(
    arrays: Sequence[np.ndarray], body: Any, directory: Path, repeat: int
) -> dict[str, float]:
    """Each stage's least CPU seconds over ``repeat`` runs of :func:`ingest_budget`, each
    run after :func:`~.wire.prime_memory`, as the timed paths are."""
    best: dict[str, float] = {}
    for _ in range(max(repeat, 1)):
        prime_memory(memoryview(body).nbytes)
        for name, seconds in ingest_budget(arrays, body, directory).items():
            best[name] = min(best.get(name, seconds), seconds)
    return best


def least_seconds(stages: Mapping[str, float], on: int) -> float:
    """The shortest an ingest can take on ``on`` cores: every pass, perfectly spread."""
    return sum(PASSES[name] * seconds for name, seconds in stages.items()) / on


def budget_row(results: Results) -> Row:
    """The report's row: the least an ingest can take here against the durable ceiling."""
    figures = results["server_ingest"]
    payload, paths = figures["payload"], figures["paths"]
    on = int(figures["cores"])
    least = least_seconds(figures["budget"], on)
    ours = mbs(payload, least)
    durable = mbs(payload, paths["durable"]["seconds"])
    return Row(
        "server_ingest_budget",
        f"server ingest at the most here: the CPU its passes need at the least (two "
        f"BLAKE3, two crc32, the finite check, the loopback copies, the durable write), "
        f"spread over {on} cores with nothing else running",
        "the best ratio this design could reach on this machine if the HTTP framing, "
        "the Python around the passes and every wait cost nothing",
        ours,
        rate_text(ours),
        "the durable write of the same bytes (as the ingest rows)",
        durable,
        rate_text(durable),
        ours / durable if durable else 0.0,
        None,
        "report",
        "",
    )


def budget_section(results: Results) -> list[str]:
    """Markdown: each pass's CPU seconds, their sum, and what the ingest target asks."""
    figures = results["server_ingest"]
    stages: Mapping[str, float] = figures["budget"]
    on = int(figures["cores"])
    lines = [
        [name, f"{seconds:.3f}", str(PASSES[name]), f"{PASSES[name] * seconds:.3f}"]
        for name, seconds in stages.items()
    ]
    total = least_seconds(stages, 1)
    allowed = figures["paths"]["durable"]["seconds"] / INGEST_TARGET
    return [
        "### The least CPU a server ingest needs here (each pass timed alone, least of the runs)",
        "",
        table(["pass", "CPU seconds", "times per ingest", "CPU seconds per ingest"], lines),
        "",
        f"In all {total:.3f} CPU seconds: at least {total / on:.3f} s on {on} cores. The "
        f"durable write took {allowed * INGEST_TARGET:.3f} s (best run), so the ingest "
        f"target ({INGEST_TARGET:g}x) asks for an ingest of at most {allowed:.3f} s, "
        f"{total / on / allowed:.2f} of which the passes alone fill.",
        "",
    ]
