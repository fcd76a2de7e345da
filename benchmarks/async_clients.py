"""The asyncio client's figures, each against the sync client measured in the same run.

    python benchmarks/async_clients.py [--clients 1000] [--rounds 5] [--model-params 100000]
        [--async-clients 256] [--threads 64] [--updates 4] [--big-mib 1024] [--output FILE]

1. **Many clients**: ``fma-connect simulate`` (fma_connect.simulate) with ``--clients``
   AsyncWebClients for ``--rounds`` rounds of a ``--model-params`` float32 model against
   the reference server in a child process: per call p50/p99, updates/s, bytes, the
   server's RSS; errors must be 0, every update stored once, every client must get
   every aggregate.
2. **Updates per second**: ``--async-clients`` AsyncWebClients on one event loop against
   WebClients on a ``--threads`` thread pool, sending the same number of updates of the
   same model to the same server (one child process, one model that never aggregates),
   interleaved async/sync ``--repeat`` times; the median of each, and their ratio.
3. **Large bodies**: a ``--big-mib`` MiB msgpack upload (``send_update``) and download
   (``check_for_latest_model``) with each client against the bare-socket peer
   (fma_connect.bench.wire_servers ``bare``: no server cost, so the clients are what is
   measured), interleaved ``--repeat`` times; best GB/s of each and the ratio (target
   >= 0.8x), and each client's peak traced memory over the payload (tracemalloc, in a
   separate untimed pass: the memory bound, not the speed).

Figures from a loaded machine are comparisons, not records: the ratios are what count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from fma_connect import AsyncWebClient, WebClient
from fma_connect._aio_transport import READ_BUFFER
from fma_connect.admin import AdminClient
from fma_connect.bench.measure import make_model
from fma_connect.server.testing import running_server_process
from fma_connect.simulate import SimulateOptions, simulate


def many_clients(args: argparse.Namespace) -> dict[str, Any]:
    """Figure 1: the simulation, and its end checks."""
    options = SimulateOptions(
        clients=args.clients,
        rounds=args.rounds,
        model_params=args.model_params,
        progress=False,
    )
    outcome = simulate(options)
    return {
        "clients": args.clients,
        "rounds": args.rounds,
        "model_params": args.model_params,
        "errors": outcome.errors,
        "stored_once": outcome.stored_once,
        "all_received": outcome.all_received,
        "rounds_detail": [
            {
                "round": r.number,
                "seconds": r.seconds,
                "updates_per_second": r.updates_per_second,
                "bytes_up": r.bytes_up,
                "bytes_down": r.bytes_down,
                "server_rss": r.server_rss,
                "p50_ms": {c: 1e3 * (r.percentile(c, 50) or 0) for c in r.latencies},
                "p99_ms": {c: 1e3 * (r.percentile(c, 99) or 0) for c in r.latencies},
            }
            for r in outcome.rounds
        ],
    }


def _update(params: int, seed: int) -> dict[str, np.ndarray]:
    return {"w": np.random.default_rng(seed).standard_normal(params).astype(np.float32)}


def updates_per_second(args: argparse.Namespace) -> dict[str, Any]:
    """Figure 2: async clients against a thread pool of sync clients, same server."""
    total: int = args.async_clients * args.updates
    update = _update(args.model_params, 0)
    with tempfile.TemporaryDirectory() as data:
        connections = str(2 * args.async_clients + 64)
        extra = ("--max-connections", connections, "--max-connections-per-client", "0")
        with running_server_process(Path(data), args=(*extra, "--log-level", "warning")) as srv:
            with AdminClient(srv.url, srv.admin_token) as admin:
                model = int(admin.create_model("throughput", allow_aggregation=False)["id"])

            async def run_async() -> float:
                connector = aiohttp.TCPConnector(limit=0)
                async with aiohttp.ClientSession(
                    connector=connector, read_bufsize=READ_BUFFER
                ) as session:
                    clients = [
                        AsyncWebClient(model, url=srv.url, codec="msgpack", session=session)
                        for _ in range(args.async_clients)
                    ]
                    await asyncio.gather(*(c.register() for c in clients))

                    async def send(client: AsyncWebClient) -> None:
                        for _ in range(args.updates):
                            await client.send_update(update)

                    started = time.perf_counter()
                    await asyncio.gather(*(send(c) for c in clients))
                    return total / (time.perf_counter() - started)

            def run_sync() -> float:
                clients = [
                    WebClient(model, url=srv.url, codec="msgpack") for _ in range(args.threads)
                ]
                for client in clients:
                    client.register()
                shares = [
                    total // args.threads + (i < total % args.threads) for i in range(len(clients))
                ]

                def send(i: int) -> None:
                    for _ in range(shares[i]):
                        clients[i].send_update(update)

                started = time.perf_counter()
                with ThreadPoolExecutor(args.threads) as pool:
                    list(pool.map(send, range(len(clients))))
                rate = total / (time.perf_counter() - started)
                for client in clients:
                    client.close()
                return rate

            rates: dict[str, list[float]] = {"async": [], "sync": []}
            for _ in range(args.repeat):
                rates["async"].append(asyncio.run(run_async()))
                rates["sync"].append(run_sync())
            with AdminClient(srv.url, srv.admin_token) as admin:
                stored = len(admin.list_updates(model))
    medians = {name: statistics.median(values) for name, values in rates.items()}
    return {
        "async_clients": args.async_clients,
        "threads": args.threads,
        "updates_per_run": total,
        "updates_per_second": medians,
        "ratio_async_to_sync": medians["async"] / medians["sync"],
        "stored": stored,
        "expected_stored": 2 * total * args.repeat,
    }


def _bare_peer(nbytes: int) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "fma_connect.bench.wire_servers", "bare", str(nbytes)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    found = re.search(r"listening on (\S+)", process.stdout.readline())
    if found is None:
        process.kill()
        raise RuntimeError("the bare peer did not start")
    return process, found.group(1)


def _traced_peak(action: Callable[[], Any]) -> int:
    tracemalloc.start()
    try:
        action()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def large_bodies(args: argparse.Namespace) -> dict[str, Any]:
    """Figure 3: one large upload and download with each client, same peer, same run."""
    nbytes = args.big_mib << 20
    model = dict(make_model(nbytes))
    size = sum(a.nbytes for a in model.values())
    process, url = _bare_peer(nbytes)
    options: dict[str, Any] = {"url": url, "codec": "msgpack", "resumable_from": None, "retries": 0}
    try:

        def sync_up() -> None:
            with WebClient(1, "3f2b6c1e-8d4a-4f0b-9c1d-2e5a7b9c0d1f", **options) as client:
                client.send_update(model)

        def sync_down() -> None:
            with WebClient(1, "3f2b6c1e-8d4a-4f0b-9c1d-2e5a7b9c0d1f", **options) as client:
                assert client.check_for_latest_model(update_after=0) is not None

        async def async_up() -> None:
            async with AsyncWebClient(1, "3f2b6c1e-8d4a-4f0b-9c1d-2e5a7b9c0d1f", **options) as c:
                await c.send_update(model)

        async def async_down() -> None:
            async with AsyncWebClient(1, "3f2b6c1e-8d4a-4f0b-9c1d-2e5a7b9c0d1f", **options) as c:
                assert await c.check_for_latest_model(update_after=0) is not None

        cases: dict[str, Callable[[], Any]] = {
            "sync upload": sync_up,
            "async upload": lambda: asyncio.run(async_up()),
            "sync download": sync_down,
            "async download": lambda: asyncio.run(async_down()),
        }
        speeds: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.repeat):
            for name, action in cases.items():
                started = time.perf_counter()
                action()
                speeds[name].append(size / (time.perf_counter() - started) / 1e9)
        peaks = {name: _traced_peak(action) / size for name, action in cases.items()}
    finally:
        process.kill()
        process.wait()
    best = {name: max(values) for name, values in speeds.items()}
    return {
        "payload_bytes": size,
        "gb_per_s": best,
        "ratio_upload": best["async upload"] / best["sync upload"],
        "ratio_download": best["async download"] / best["sync download"],
        "peak_traced_memory_over_payload": peaks,
    }


def _print(results: dict[str, Any]) -> None:
    if "many_clients" in results:
        m = results["many_clients"]
        print(
            f"\n## {m['clients']} clients x {m['rounds']} rounds, {m['model_params']} params\n"
            f"errors {m['errors']}, every update stored once: {m['stored_once']}, every "
            f"client got every aggregate: {m['all_received']}"
        )
    if "updates_per_second" in results:
        u = results["updates_per_second"]
        print(
            f"\n## updates/s: {u['async_clients']} async clients vs {u['threads']} threads\n"
            f"| client | updates/s |\n|---|---|\n"
            f"| async | {u['updates_per_second']['async']:.1f} |\n"
            f"| sync | {u['updates_per_second']['sync']:.1f} |\n"
            f"ratio async/sync: {u['ratio_async_to_sync']:.2f}x; stored {u['stored']} of "
            f"{u['expected_stored']}"
        )
    if "large_bodies" in results:
        b = results["large_bodies"]
        print(f"\n## {b['payload_bytes'] / 2**20:.0f} MiB bodies (bare peer)")
        print("| transfer | GB/s | peak traced memory / payload |\n|---|---|---|")
        for name, speed in b["gb_per_s"].items():
            peak = b["peak_traced_memory_over_payload"][name]
            print(f"| {name} | {speed:.2f} | {peak:.2f} |")
        print(
            f"ratio async/sync: upload {b['ratio_upload']:.2f}x, "
            f"download {b['ratio_download']:.2f}x"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--model-params", type=int, default=100_000)
    parser.add_argument("--async-clients", type=int, default=256)
    parser.add_argument("--threads", type=int, default=64)
    parser.add_argument("--updates", type=int, default=4, help="updates per async client")
    parser.add_argument("--big-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument(
        "--only", choices=("many", "throughput", "large"), action="append", help="figures to run"
    )
    parser.add_argument("--output", type=Path, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    only = set(args.only or ("many", "throughput", "large"))
    results: dict[str, Any] = {}
    if "many" in only:
        results["many_clients"] = many_clients(args)
    if "throughput" in only:
        results["updates_per_second"] = updates_per_second(args)
    if "large" in only:
        results["large_bodies"] = large_bodies(args)
    _print(results)
    if args.output is not None:
        args.output.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
