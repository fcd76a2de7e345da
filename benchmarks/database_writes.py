"""Write transactions per second of the server's database: the ceiling docs/SCALING.md's
estimate leans on.

    python benchmarks/database_writes.py [--seconds 5] [--threads 1,16]

Every write transaction of the server runs under one lock (SQLite's ``BEGIN IMMEDIATE``,
PostgreSQL's advisory transaction lock, see fma_connect/server/database.py), so the
database's write rate bounds updates, chunks and signed requests across all replicas.
This measures it with a typical small write, a client's registration with a model (a
row in ``clients`` and one in ``model_clients``, committed durably), from N threads at
once, on SQLite in a temporary directory and on a throwaway PostgreSQL cluster on this
machine (Debian's PostgreSQL, default settings: ``synchronous_commit`` on). A
production PostgreSQL on its own machine and disk answers over the network instead of
a local socket and flushes its WAL to its own disk: a different figure, and the one to
measure before relying on the estimate.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

from fma_connect.server.pgcluster import throwaway_cluster
from fma_connect.server.store import Store


def _rate(store: Store, threads: int, seconds: float) -> float:
    """Registrations committed per second by ``threads`` threads for ``seconds``."""
    store.ensure_admin(None)
    fields = {"name": "bench", "developer": 1, "aggregator": "avg_values_if_data"}
    model = store.insert_model({**fields, "allow_aggregation": True}, [], None)
    stop = time.monotonic() + seconds
    counts = [0] * threads

    def work(i: int) -> None:
        while time.monotonic() < stop:
            store.register_client(model, None)
            counts[i] += 1

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    start = time.monotonic()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(counts) / (time.monotonic() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement (5)")
    parser.add_argument("--threads", default="1,16", help="thread counts (default 1,16)")
    args = parser.parse_args()
    counts = [int(n) for n in args.threads.split(",")]
    with tempfile.TemporaryDirectory() as where, throwaway_cluster() as cluster:
        for threads in counts:
            for engine in ("sqlite", "postgresql"):
                name = f"bench_{engine}_{threads}"
                url = cluster.create_database(name) if engine == "postgresql" else None
                store = Store(Path(where) / f"{name}.sqlite3", url)
                try:
                    rate = _rate(store, threads, args.seconds)
                finally:
                    store.close()
                print(f"{engine:>10}, {threads:>2} threads: {rate:,.0f} write transactions/s")


if __name__ == "__main__":
    main()
