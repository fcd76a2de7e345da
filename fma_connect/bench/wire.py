"""The wire benchmark's measuring pieces: alternating best-of-N runs and the bare peers.

A comparison is a few :class:`Contender` s doing the same job by different paths;
:func:`alternate` runs them in turns, rotating which goes first each round (A B, B A,
A B, ...), so a drift of the machine (page cache, dirty pages being written back, another
user's load) cannot favour one path, and keeps each one's best time. Given ``prime``, it
touches and frees that much memory before each timed run (:func:`prime_memory`), so each
starts with as much memory at hand whatever ran before it. That makes a ratio
of two figures from one run trustworthy on a shared machine, where the figures
themselves are not. Timing and the client's peak memory come from :func:`.measure.timed`,
a server's peak anonymous memory from :class:`fma_connect.bench.MemoryWatch`.

The bare peers move the same bytes with nothing in the way: :func:`bare_post` and
:func:`bare_get_into` speak HTTP/1.1 over a plain socket, :func:`durable_write` writes a
file from memory with plain system calls and the server's fsync policy (a background
sync every 64 MiB, fsync the file, rename, fsync the directory); the bare sink stores a
body the same way (:func:`store_durably`) as it arrives.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from .measure import timed

__all__ = [
    "Best",
    "Caller",
    "Contender",
    "Stages",
    "address",
    "alternate",
    "bare_caller",
    "bare_get_into",
    "bare_post",
    "durable_write",
    "hammer",
    "percentile",
    "prime_memory",
    "response_head",
    "send_sliced",
    "store_durably",
]

#: The most bytes :func:`store_durably` hands one write call. Until 2026-12-02 the
#: ceiling wrote 16 MiB slices, as the issue measured it; those take the page cache's
#: slow path for large folios here (1 GiB: 2.1-2.3 s, against 0.22-0.49 s in 1 MiB
#: writes; see :mod:`fma_connect.server.file_writes`, which slices the server's writes
#: for the same reason), so the ceiling measured that path, not the disk.
WRITE_SLICE = 1 << 20
#: The slices a bare GET reads into its buffer (as the client's transport does).
READ_SLICE = 16 << 20
#: The slices the bare peers send. On loopback here one ``sendall`` of 1 GiB ran at
#: ~2.5 GB/s and 1-4 MiB slices at ~4.3 GB/s (64 KiB: ~1.7 GB/s): a ceiling sends these.
SEND_SLICE = 1 << 20


class Stages(dict[str, float]):
    """Seconds per stage, as a :class:`Contender`'s run returns them to have them kept."""


@dataclass
class Contender:
    """One path of a comparison.

    Attributes:
        name: Its key in :func:`alternate`'s answer.
        run: The timed work. When it returns :class:`Stages`, those of its fastest run
            are kept as :attr:`Best.stages`.
        setup: Untimed work before each run (a fresh model to send to, say).
        teardown: Untimed work after each run (delete what it stored).
        watch_pid: A server process whose resident anonymous memory is sampled while
            ``run`` runs (None: no server is watched).
    """

    name: str
    run: Callable[[], Any]
    setup: Callable[[], object] | None = None
    teardown: Callable[[], object] | None = None
    watch_pid: int | None = None


@dataclass
class Best:
    """A contender's figures over its timed runs.

    Attributes:
        seconds: The fastest run's wall time.
        runs: Every timed run's wall time, in order.
        client_peak: This process's largest extra resident memory during a run, bytes.
        server_anon: The watched server's largest extra anonymous memory, bytes.
        exact: Whether the client peak is exact (``VmHWM`` could be reset).
        stages: The fastest run's seconds per stage, when ``run`` reports them.
    """

    seconds: float = float("inf")
    runs: list[float] = field(default_factory=list)
    client_peak: int = 0
    server_anon: int = 0
    exact: bool = True
    stages: dict[str, float] = field(default_factory=dict)


@contextlib.contextmanager
def _watching(pid: int | None) -> Iterator[Any]:
    from . import MemoryWatch  # the main benchmark's sampler (RssAnon every 5 ms)

    watch = MemoryWatch(pid)
    with watch.watching():
        yield watch


def alternate(
    contenders: Sequence[Contender], repeat: int, warmup: bool, prime: int = 0
) -> dict[str, Best]:
    """Run the contenders in turns, ``repeat`` timed runs each; return each one's best.

    Args:
        contenders: The paths; each round starts one further along the list.
        repeat: Timed runs of each.
        warmup: Run each once, untimed, first (first touches of memory, connections,
            the server's caches are then out of the figures, as in a long-running process).
        prime: Before each timed run, after its setup, touch and free this many bytes of
            memory (:func:`prime_memory`), so every run starts with as much memory at hand.
    """
    best = {c.name: Best() for c in contenders}
    if warmup:
        for contender in contenders:
            _once(contender, None, prime)
    for round_index in range(max(repeat, 1)):
        shift = round_index % len(contenders)
        for contender in [*contenders[shift:], *contenders[:shift]]:
            _once(contender, best[contender.name], prime)
    return best


def prime_memory(nbytes: int) -> None:
    """Touch ``nbytes`` of new memory, then free it.

    This project's VM (Firecracker, its kernel reporting free memory to the host) hands
    free memory back to its host once more than 1 GiB of it is waiting
    (``/sys/module/page_reporting/parameters/max_waiting_mib``); the next touch of a page
    given back faults to the host. A 1 GiB write into the page cache took 0.22-0.31 s
    with memory just freed, and 0.23-1.69 s without (six writes each, 2026-12-02). So
    without this, whether a path finds memory at hand depends on what ran before it (a
    deleted model's blob, a dropped buffer), and the scatter of a ceiling (0.57-2.5 s)
    swamped the ratios.
    """
    block = np.ones(nbytes, np.uint8)  # mapped on its own, so given back when freed
    del block


def _once(contender: Contender, best: Best | None, prime: int) -> None:
    if contender.setup is not None:
        contender.setup()
    try:
        if prime:
            prime_memory(prime)
        with _watching(contender.watch_pid) as watch:
            figures, result = timed(contender.run, 1, warmup=False)
        if best is None:
            return
        best.runs.append(figures.seconds)
        best.client_peak = max(best.client_peak, figures.peak_extra)
        best.server_anon = max(best.server_anon, watch.peak_anon)
        best.exact = best.exact and figures.exact
        if figures.seconds < best.seconds:
            best.seconds = figures.seconds
            if isinstance(result, Stages):
                best.stages = dict(result)
        del result
    finally:
        if contender.teardown is not None:
            contender.teardown()


def address(url: str) -> tuple[str, int]:
    """``(host, port)`` of an ``http://`` URL."""
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 80


def response_head(reader: Any) -> int:
    """Read a 2xx response head; return its Content-Length."""
    status = reader.readline()
    if not status.startswith(b"HTTP/1.1 2"):
        raise RuntimeError(f"bare peer answered {status!r}")
    length = 0
    while (line := reader.readline()) not in (b"\r\n", b""):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return length


def send_sliced(sock: socket.socket, view: memoryview) -> None:
    """``sendall`` a buffer in :data:`SEND_SLICE` slices (views, no copies)."""
    for start in range(0, view.nbytes, SEND_SLICE):
        sock.sendall(view[start : start + SEND_SLICE])


def bare_post(url: str, body: Any, path: str = "/") -> None:
    """POST ``body`` (bytes-like) to ``path`` over a bare socket and read the answer."""
    view = memoryview(body).cast("B")
    head = f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Length: {view.nbytes}\r\n\r\n"
    with socket.create_connection(address(url)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(head.encode("ascii"))
        send_sliced(sock, view)
        with sock.makefile("rb") as reader:
            reader.read(response_head(reader))


def bare_get_into(url: str, target: memoryview, prefix: str = "/") -> int:
    """``GET <prefix><n>`` over a bare socket, ``n`` the size of ``target``, read into it."""
    with socket.create_connection(address(url)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(f"GET {prefix}{target.nbytes} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
        with sock.makefile("rb") as reader:
            length = response_head(reader)
            got = 0
            while got < length:
                n = reader.readinto(target[got : min(got + READ_SLICE, length)])
                if not n:
                    raise RuntimeError(f"bare GET ended after {got} of {length} bytes")
                got += n
    return length


def bare_caller(url: str, path: str, headers: dict[str, str]) -> Caller:
    """A ``GET path`` over one kept-alive bare socket, for :func:`hammer`: (call, close).

    It costs the client far less than ``requests`` does, so that many of them in one
    Python process load the server, not themselves.
    """
    sock = socket.create_connection(address(url))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    reader = sock.makefile("rb")
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    request = f"GET {path} HTTP/1.1\r\nHost: bench\r\n{lines}\r\n".encode("latin-1")

    def call() -> None:
        sock.sendall(request)
        reader.read(response_head(reader))

    def close() -> None:
        reader.close()
        sock.close()

    return call, close


def durable_write(directory: Path, body: Any) -> Callable[[], None]:
    """Write ``body`` to a file in ``directory`` durably (:func:`store_durably`, from
    memory); return what deletes it. Only the absence of a network differs from an
    upload."""
    path = directory / f"ceiling-{os.getpid()}-{threading.get_ident()}.bin"
    store_durably(path, [memoryview(body).cast("B")])
    return lambda: path.unlink(missing_ok=True)


def store_durably(path: Path, pieces: Iterable[memoryview]) -> None:
    """Write ``pieces``, in order, to a new file at ``path`` durably.

    Plain system calls, not the server's code, with the server's fsync policy: a
    background ``fdatasync`` every :data:`~fma_connect.server.blobs.SYNC_EVERY` bytes
    while writing, an ``fsync`` of the file at the end, a rename into place and an
    ``fsync`` of the directory. A piece is written whole, in slices of at most
    :data:`WRITE_SLICE` bytes, before the next is asked for.
    """
    from ..server.blobs import SYNC_EVERY

    temporary = path.with_name(f".{path.name}.part")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    syncing: threading.Thread | None = None
    try:
        synced = end = 0
        for piece in pieces:
            for at in range(0, piece.nbytes, WRITE_SLICE):
                part = piece[at : at + WRITE_SLICE]
                done = 0
                while done < part.nbytes:  # a write may take fewer bytes than it was given
                    done += os.write(fd, part[done:])
            end += piece.nbytes
            if end - synced >= SYNC_EVERY and (syncing is None or not syncing.is_alive()):
                synced = end
                syncing = threading.Thread(target=os.fdatasync, args=(fd,))
                syncing.start()
        if syncing is not None:
            syncing.join()
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)
    directory_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory_fd)
    finally:
        os.close(directory_fd)


def percentile(samples: Sequence[float], share: float) -> float:
    """The ``share`` (0-1) percentile of ``samples`` (linear interpolation)."""
    return float(np.percentile(np.asarray(samples, dtype=np.float64), share * 100))


#: What :func:`hammer` gives each thread: the call to repeat, and what closes its client.
Caller = tuple[Callable[[], Any], Callable[[], None]]


def hammer(threads: int, calls: int, make_caller: Callable[[], Caller]) -> float:
    """Seconds for ``threads`` threads to make ``calls`` calls each, all started together.

    Each thread gets its own call from ``make_caller`` (its own client and connection)
    and makes it once before the start, so connecting is not timed.

    Raises:
        RuntimeError: a call failed (the first failure is chained).
    """
    start = threading.Barrier(threads + 1)
    done = threading.Barrier(threads + 1)
    failures: list[BaseException] = []

    def work() -> None:
        caller: Caller | None = None
        try:
            caller = make_caller()
            caller[0]()
        except Exception as exc:
            failures.append(exc)
        start.wait()
        try:
            if caller is not None and not failures:
                for _ in range(calls):
                    caller[0]()
        except Exception as exc:
            failures.append(exc)
        finally:
            done.wait()
            if caller is not None:
                caller[1]()

    workers = [threading.Thread(target=work, daemon=True) for _ in range(threads)]
    for worker in workers:
        worker.start()
    start.wait()
    began = time.perf_counter()
    done.wait()
    seconds = time.perf_counter() - began
    for worker in workers:
        worker.join()
    if failures:
        raise RuntimeError(f"{len(failures)} of {threads} clients failed") from failures[0]
    return seconds
