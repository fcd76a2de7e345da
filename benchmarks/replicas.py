"""Replicas behind a load balancer: every update stored once, rounds exactly once, a crash survived.

    python benchmarks/replicas.py [--clients 64] [--updates 10] [--replicas 3] [--kib 16]

A throwaway PostgreSQL cluster (fma_connect.server.pgcluster: initdb in a temporary
directory, 127.0.0.1, removed at the end) holds the database; ``fma-connect serve``
replicas (child processes) share it and one data directory, behind a round-robin TCP
proxy on 127.0.0.1 (fma_connect.server.testing.RoundRobinProxy). Each model has
``require_x_updates`` = the number of clients, so each round is one update from every
client; clients send at once (one thread each), then wait for the round's aggregate.

Runs, each on a fresh database:

1. one replica: updates/s and polls/s (``get_latest_aggregate`` GETs), the baseline;
2. ``--replicas`` replicas: the same;
3. ``--replicas`` replicas, one SIGKILLed in the middle of a round (its first round
   stops at the ``round-running`` pause point, then it is killed): the clients' retries
   (same Idempotency-Key) go to the live replicas, and a live one takes the round over
   when the dead one's lease (2 s here) expires.

Each run prints stored / lost / duplicated (per client: updates stored against updates
it sent) and whether every round's aggregate equals numpy's mean of that round's updates
(float64 sums in arrival order, as the server computes them). On 2 shared cores the
replicas compete with the clients for CPU, so compare the rows of one run, not machines.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import requests

from fma_connect import WebClient
from fma_connect.admin import AdminClient
from fma_connect.server.limits import PAUSE_ENV
from fma_connect.server.pgcluster import Cluster, throwaway_cluster
from fma_connect.server.testing import RoundRobinProxy, ServerProcess, running_server_process

TOKEN = "replicas-benchmark"
LEASE = "2"
POLLS = 20


def _tree(seed: int, floats: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "w": rng.standard_normal(floats).astype(np.float32),
        "b": rng.standard_normal(8).astype(np.float32),
    }


def _mean(trees: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    out = {}
    for name in trees[0]:
        total = np.zeros(trees[0][name].shape, np.float64)
        for tree in trees:
            total += tree[name].astype(np.float64)
        out[name] = (total / len(trees)).astype(trees[0][name].dtype)
    return out


@contextlib.contextmanager
def _service(
    cluster: Cluster, name: str, replicas: int, paused: Path | None
) -> Iterator[tuple[list[ServerProcess], RoundRobinProxy]]:
    url = cluster.create_database(name)
    data = Path(tempfile.mkdtemp(prefix=f"fma-replicas-{name}-"))
    try:
        with contextlib.ExitStack() as stack:
            servers = []
            for i in range(replicas):
                env = {PAUSE_ENV: f"round-running:{paused}"} if paused and i == 0 else {}
                servers.append(
                    stack.enter_context(
                        running_server_process(
                            data,
                            admin_token=TOKEN,
                            database=url,
                            # Every client comes through the proxy, from one address:
                            # the per-address cap (64 by default) would refuse them.
                            args=(
                                "--log-level",
                                "error",
                                "--round-lease",
                                LEASE,
                                "--max-connections-per-client",
                                "0",
                            ),
                            env=env,
                        )
                    )
                )
            proxy = stack.enter_context(RoundRobinProxy([s.url for s in servers]))
            yield servers, proxy
    finally:
        cluster.drop_database(name)


def _run(
    cluster: Cluster, name: str, replicas: int, clients: int, updates: int, floats: int, kill: bool
) -> dict[str, Any]:
    marker = Path(tempfile.mkdtemp()) / "paused" if kill else None
    with _service(cluster, name, replicas, marker) as (servers, proxy):
        admin = AdminClient(proxy.url, TOKEN, retries=5)
        model = admin.create_model(
            "bench", requirement="require_x_updates", requirement_args=[clients]
        )["id"]
        web = [
            WebClient(model, url=proxy.url, codec="msgpack", retries=5, retry_updates=True)
            for _ in range(clients)
        ]
        for client in web:
            client.register()
        killed: list[float] = []

        def killer() -> None:
            assert marker is not None
            while not marker.exists():
                if stop.is_set():
                    return
                time.sleep(0.05)
            servers[0].kill()
            killed.append(time.monotonic())

        stop = threading.Event()
        watcher = threading.Thread(target=killer, daemon=True) if kill else None
        if watcher is not None:
            watcher.start()
        sent: dict[int, list[tuple[int, dict[str, np.ndarray]]]] = {}  # round -> (id, tree)
        per_client = [0] * clients
        errors: list[BaseException] = []
        started = time.monotonic()
        for number in range(updates):
            rows: list[tuple[int, dict[str, np.ndarray]]] = []
            lock = threading.Lock()

            def send(
                i: int, number: int = number, rows: list[Any] = rows, lock: Any = lock
            ) -> None:
                tree = _tree(100_000 * number + i, floats)
                try:
                    row = web[i].send_update(tree)
                except BaseException as exc:
                    errors.append(exc)
                    return
                with lock:
                    rows.append((row["id"], tree))
                    per_client[i] += 1

            last = clients - 1 if kill and number == 1 else None
            threads = [
                threading.Thread(target=send, args=(i,)) for i in range(clients) if i != last
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            if last is not None:
                # The round's last update goes to the doomed replica, which runs the round
                # and stops at the pause point; the client's retry (its new connection
                # skips the dead replica) sends it again, same key, to a live one.
                web[last] = WebClient(
                    model,
                    web[last].uuid,
                    url=proxy.url,
                    codec="msgpack",
                    retries=5,
                    retry_updates=True,
                )
                proxy.send_next_to(0)
                send(last)
            sent[number] = rows
            deadline = time.monotonic() + 120
            while len(admin.list_aggregates(model)) < number + 1:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"round {number} did not complete")
                time.sleep(0.05)
        elapsed = time.monotonic() - started
        stop.set()
        poll_started = time.monotonic()

        def poll(i: int) -> None:
            session = requests.Session()
            for _ in range(POLLS):
                response = session.get(
                    f"{proxy.url}/api/v1/models/{model}/get_latest_aggregate/",
                    headers={"CLIENT-UUID": web[i].uuid},
                    timeout=30,
                )
                response.raise_for_status()

        pollers = [threading.Thread(target=poll, args=(i,)) for i in range(clients)]
        for thread in pollers:
            thread.start()
        for thread in pollers:
            thread.join()
        poll_elapsed = time.monotonic() - poll_started
        stored = admin.list_updates(model)
        by_client: dict[str, int] = {}
        for update in stored:
            by_client[update["client"]] = by_client.get(update["client"], 0) + 1
        counts = [by_client.get(c.uuid, 0) for c in web]
        # Each round's aggregate against numpy's mean of that round's updates.
        exact = True
        groups: dict[int, list[int]] = {}
        for update in stored:
            groups.setdefault(update["applied_aggregate"], []).append(update["id"])
        trees = {i: tree for rows in sent.values() for i, tree in rows}
        for aggregate_id, ids in groups.items():
            response = requests.get(
                f"{proxy.url}/api/v1/model_aggregates/{aggregate_id}/",
                headers={"Authorization": f"Token {TOKEN}"},
                timeout=30,
            )
            result = response.json()["result"]
            want = _mean([trees[i] for i in sorted(ids) if i in trees])
            # JSON answers write each float32 in its shortest form: read back as float32.
            got = {
                n: np.asarray(v, want[n].dtype) for n, v in zip(sorted(want), result, strict=True)
            }
            exact &= all(np.array_equal(got[n], want[n]) for n in want)
        return {
            "replicas": replicas,
            "sent": clients * updates,
            "stored": len(stored),
            "lost": sum(max(0, updates - n) for n in counts),
            "duplicated": sum(max(0, n - updates) for n in counts),
            "aggregates": len(groups),
            "exact": exact and len(groups) == updates,
            "errors": [repr(e) for e in errors],
            "updates_per_s": clients * updates / elapsed,
            "polls_per_s": clients * POLLS / poll_elapsed,
            "killed": bool(killed),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--updates", type=int, default=10, help="updates per client")
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--kib", type=int, default=16, help="update size in KiB (float32)")
    args = parser.parse_args()
    floats = args.kib * 256
    print(
        f"{os.cpu_count()} cores; {args.clients} clients x {args.updates} updates, {args.kib} KiB"
    )
    with throwaway_cluster(max_connections=100 + 30 * args.replicas) as cluster:
        runs = [
            _run(cluster, "one", 1, args.clients, args.updates, floats, kill=False),
            _run(cluster, "many", args.replicas, args.clients, args.updates, floats, kill=False),
            _run(cluster, "killed", args.replicas, args.clients, args.updates, floats, kill=True),
        ]
    header = (
        f"{'run':<28}{'sent':>6}{'stored':>8}{'lost':>6}{'dup':>5}{'aggs':>6}{'exact':>7}"
        f"{'updates/s':>11}{'polls/s':>9}"
    )
    print(header)
    for run in runs:
        for error in run["errors"]:
            print(f"error in the {run['replicas']}-replica run: {error}")
    for run, label in zip(
        runs,
        ["1 replica", f"{args.replicas} replicas", f"{args.replicas} replicas, 1 SIGKILLed"],
        strict=True,
    ):
        if run["killed"] is False and "SIGKILL" in label:
            label += " (not reached)"
        print(
            f"{label:<28}{run['sent']:>6}{run['stored']:>8}{run['lost']:>6}{run['duplicated']:>5}"
            f"{run['aggregates']:>6}{'yes' if run['exact'] else 'NO':>7}"
            f"{run['updates_per_s']:>11.1f}{run['polls_per_s']:>9.1f}"
        )


if __name__ == "__main__":
    main()
