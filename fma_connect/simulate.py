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
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from .exceptions import ConfigurationError, FMAConnectError

__all__ = ["Outcome", "RoundReport", "SimulateOptions", "add_arguments", "main", "simulate"]

#: The calls whose latency is reported, in the order a client makes them.
CALLS = ("register", "check_for_latest_model", "send_update", "wait_for_new_model")
#: Connections the embedded server admits beyond two per client (admin, checks).
_SPARE_CONNECTIONS = 64


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


@dataclass
class RoundReport:
    """One round's figures (round 0: registering and fetching the initial model)."""

    number: int
    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    updates: int = 0
    updates_seconds: float = 0.0
    bytes_up: int = 0
    bytes_down: int = 0
    server_rss: int | None = None

    @property
    def updates_per_second(self) -> float:
        """Updates stored per second, from the round's start to its last update."""
        return self.updates / self.updates_seconds if self.updates_seconds else 0.0

    def percentile(self, call: str, q: float) -> float | None:
        """The ``q``-th percentile latency of ``call`` in seconds (None: no calls)."""
        values = self.latencies.get(call)
        return float(np.percentile(values, q)) if values else None


@dataclass
class Outcome:
    """What a simulation did: its rounds and its end checks."""

    options: SimulateOptions
    rounds: list[RoundReport]
    aggregates: list[int]
    stored_once: bool
    all_received: bool
    detail: list[str]

    @property
    def errors(self) -> int:
        """Failed calls, over all rounds."""
        return sum(sum(r.errors.values()) for r in self.rounds)

    @property
    def ok(self) -> bool:
        """No errors, every update stored once, every client got every aggregate."""
        return self.errors == 0 and self.stored_once and self.all_received


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
            url, token, server_pid = stack.enter_context(_embedded_server(options.clients))
        else:
            url, token = options.url, options.token or ""
        model = _create_model(url, token, options)
        print(
            f"simulate: {options.clients} clients, {options.rounds} rounds, "
            f"{options.model_params} parameters ({options.codec}), model {model} at {url}",
            file=out,
        )
        run = _Simulation(options, url, model, server_pid, out)
        rounds = asyncio.run(run.run())
        outcome = _verify(options, url, token, model, rounds, run)
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


@contextmanager
def _embedded_server(clients: int) -> Iterator[tuple[str, str, int]]:
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


def _initial(params: int) -> dict[str, np.ndarray]:
    bias = min(64, params // 2)
    return {
        "dense.b": np.zeros(bias, np.float32),
        "dense.w": np.zeros(params - bias, np.float32),
    }


def _create_model(url: str, token: str, options: SimulateOptions) -> int:
    from .admin import AdminClient

    # Plain lists in flattening (name) order: the initial model every client fetches.
    initial = [array.tolist() for _, array in sorted(_initial(options.model_params).items())]
    with AdminClient(url, token) as admin:
        created = admin.create_model(
            f"simulate-{options.clients}x{options.rounds}",
            requirement="require_x_updates",
            requirement_args=[options.clients],
            initial_model=initial,
        )
    return int(created["id"])


class _Simulation:
    """The clients, their rounds, and the counters they share."""

    def __init__(
        self, options: SimulateOptions, url: str, model: int, server_pid: int | None, out: TextIO
    ) -> None:
        self.options, self.url, self.model, self.server_pid = options, url, model, server_pid
        self.out = out
        self.received: list[list[int]] = [[] for _ in range(options.clients)]
        self.uuids: list[str | None] = [None] * options.clients
        self.up = 0
        self.down = 0

    async def run(self) -> list[RoundReport]:
        import aiohttp

        from ._aio_transport import READ_BUFFER
        from .aio import AsyncWebClient

        trace = aiohttp.TraceConfig()
        trace.on_request_chunk_sent.append(self._sent)
        trace.on_request_end.append(self._received)
        connector = aiohttp.TCPConnector(limit=0)  # a long-poll per client holds one
        rounds: list[RoundReport] = []
        bar = _Bar(self.options.clients * (self.options.rounds + 1), self.options.progress)
        async with aiohttp.ClientSession(
            connector=connector, trace_configs=[trace], read_bufsize=READ_BUFFER
        ) as session:
            clients = [
                AsyncWebClient(self.model, url=self.url, codec=self.options.codec, session=session)
                for _ in range(self.options.clients)
            ]
            weights: list[Any] = [None] * len(clients)
            initial = _initial(self.options.model_params)
            report = self._start(0)

            async def start(i: int) -> None:
                uuid = await self._timed(report, "register", clients[i].register())
                self.uuids[i] = uuid
                latest = await self._timed(
                    report,
                    "check_for_latest_model",
                    clients[i].check_for_latest_model(like=initial),
                )
                weights[i] = None if latest is None else latest["values"]
                bar.step()

            await asyncio.gather(*(start(i) for i in range(len(clients))))
            rounds.append(self._finish(report, time.perf_counter()))
            self._print_round(rounds[-1])
            for number in range(1, self.options.rounds + 1):
                report = self._start(number)
                last_stored = [report.seconds]

                async def one(
                    i: int,
                    report: RoundReport = report,
                    number: int = number,
                    last_stored: list[float] = last_stored,
                ) -> None:
                    rng = np.random.default_rng((number, i))
                    base = weights[i] if weights[i] is not None else initial
                    noise = {k: rng.standard_normal(v.shape, np.float32) for k, v in base.items()}
                    update = {k: v + 1e-3 * noise[k] for k, v in base.items()}
                    sent = await self._timed(report, "send_update", clients[i].send_update(update))
                    if sent is not None:
                        report.updates += 1
                        last_stored[0] = time.perf_counter()
                    got = await self._timed(
                        report,
                        "wait_for_new_model",
                        clients[i].wait_for_new_model(self.options.wait),
                    )
                    if got is not None:
                        self.received[i].append(int(got["id"]))
                        weights[i] = got["result"]
                    else:
                        report.errors["wait_for_new_model (none came)"] = (
                            report.errors.get("wait_for_new_model (none came)", 0) + 1
                        )
                    bar.step()

                started = time.perf_counter()
                await asyncio.gather(*(one(i) for i in range(len(clients))))
                report.updates_seconds = last_stored[0] - started
                rounds.append(self._finish(report, time.perf_counter()))
                bar.clear()
                self._print_round(rounds[-1])
            for client in clients:
                await client.aclose()
        bar.close()
        return rounds

    def _start(self, number: int) -> RoundReport:
        self.up = self.down = 0
        report = RoundReport(number)
        report.seconds = time.perf_counter()  # the start, until _finish makes it a duration
        return report

    def _finish(self, report: RoundReport, end: float) -> RoundReport:
        report.seconds = end - report.seconds
        report.bytes_up, report.bytes_down = self.up, self.down
        report.server_rss = _rss(self.server_pid)
        return report

    async def _timed(self, report: RoundReport, call: str, coroutine: Any) -> Any:
        started = time.perf_counter()
        try:
            result = await coroutine
        except FMAConnectError as exc:
            key = f"{call}: {type(exc).__name__}"
            report.errors[key] = report.errors.get(key, 0) + 1
            return None
        report.latencies.setdefault(call, []).append(time.perf_counter() - started)
        return result

    async def _sent(self, _session: Any, _context: Any, params: Any) -> None:
        self.up += len(params.chunk)

    async def _received(self, _session: Any, _context: Any, params: Any) -> None:
        # Counted by the answers' Content-Length (the body itself is read by the client).
        self.down += params.response.content_length or 0

    def _print_round(self, report: RoundReport) -> None:
        print(format_round(report, self.options), file=self.out, flush=True)


def format_round(report: RoundReport, options: SimulateOptions) -> str:
    """A round's figures as the lines ``simulate`` prints."""
    if report.number == 0:
        title = "setup (register, fetch the initial model)"
    else:
        title = f"round {report.number}/{options.rounds}"
    rss = "n/a" if report.server_rss is None else _size(report.server_rss)
    errors = sum(report.errors.values())
    lines = [f"{title}: {report.seconds:.2f} s"]
    if report.number:
        lines[0] += f", {report.updates} updates, {report.updates_per_second:.1f} updates/s"
    lines[0] += (
        f", up {_size(report.bytes_up)}, down {_size(report.bytes_down)}, "
        f"errors {errors}, server RSS {rss}"
    )
    lines.append(f"  {'call':<24}{'n':>7}{'p50 ms':>11}{'p99 ms':>11}")
    for call in CALLS:
        if call in report.latencies:
            p50, p99 = report.percentile(call, 50), report.percentile(call, 99)
            assert p50 is not None and p99 is not None
            lines.append(
                f"  {call:<24}{len(report.latencies[call]):>7}{p50 * 1e3:>11.1f}{p99 * 1e3:>11.1f}"
            )
    lines.extend(f"  error {name}: {count}" for name, count in sorted(report.errors.items()))
    return "\n".join(lines)


def _size(nbytes: int) -> str:
    """Bytes for people: 81.9 kB, 400.0 MB, 1.1 GB."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} B"


def _verify(
    options: SimulateOptions,
    url: str,
    token: str,
    model: int,
    rounds: list[RoundReport],
    run: _Simulation,
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


def _print_outcome(outcome: Outcome, out: TextIO) -> None:
    for line in outcome.detail:
        print(line, file=out)
    print(f"errors: {outcome.errors}; {'OK' if outcome.ok else 'FAILED'}", file=out, flush=True)


def _rss(pid: int | None) -> int | None:
    """A process's resident memory in bytes (Linux /proc), None when unknown."""
    if pid is None:
        return None
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return None


class _Bar:
    """A progress bar of client steps on stderr: tqdm when installed, else a plain one;
    none when stderr is not a terminal."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.done = total, 0
        self.enabled = enabled and sys.stderr.isatty()
        self._tqdm: Any = None
        self._shown = -1
        if self.enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                pass
            else:
                self._tqdm = tqdm(total=total, unit="step", leave=False)

    def step(self) -> None:
        self.done += 1
        if not self.enabled:
            return
        if self._tqdm is not None:
            self._tqdm.update(1)
            return
        percent = 100 * self.done // self.total
        if percent != self._shown:
            self._shown = percent
            filled = percent // 5
            sys.stderr.write(f"\r[{'#' * filled}{' ' * (20 - filled)}] {percent:3d}%")
            sys.stderr.flush()

    def clear(self) -> None:
        """Make room for a line of output."""
        if self.enabled and self._tqdm is None:
            sys.stderr.write("\r" + " " * 30 + "\r")
        elif self._tqdm is not None:
            self._tqdm.clear()

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
        else:
            self.clear()


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
