"""The clients of ``fma-connect simulate``: N asyncio clients on one event loop, their
rounds, the counters they share (latency, bytes on the wire, errors), the server's
memory each round, and the progress bar they draw (a part of :mod:`fma_connect.simulate`).
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from .exceptions import FMAConnectError
from .simulate_options import SimulateOptions, initial_weights
from .simulate_reports import RoundReport, format_round

__all__ = ["Simulation"]


class Simulation:
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
            initial = initial_weights(self.options.model_params)
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
