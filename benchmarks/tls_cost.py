"""What TLS costs: the same transfers to ``fma-connect serve`` over HTTPS and plain HTTP.

    python benchmarks/tls_cost.py [--mib 256] [--repeat 5]

Two servers run as child processes, one with ``--tls-cert`` (a throwaway CA made
here with trustme) and one without, each over its own data directory. Against each, a
WebClient sends ``--mib`` MiB of float32 weights in msgpack (``send_update``, stored
durably: the disk is in both) and fetches them back (``check_for_latest_model`` into
the arrays of the last fetch), the two servers alternating ``--repeat`` times. Prints
the median seconds of each and the ratio HTTPS / HTTP: what encryption adds on this
machine's 2 cores, where the client, the server and the cipher share them.

This is a cost figure of our own server, not a speed target: both sides run through
``fma-connect serve``, so neither is a peer that is not the bottleneck. The TLS ceiling
itself (a bare TLS socket sending the same bytes from memory, against which our HTTPS
path would be judged) is not measured here yet.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import trustme

from fma_connect import AdminClient, WebClient
from fma_connect.server.testing import ServerProcess, running_server_process


def _timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=256, help="payload MiB (default 256)")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each (default 5)")
    args = parser.parse_args()
    weights = {"w": np.random.default_rng(0).random(args.mib << 18, dtype=np.float32)}
    with tempfile.TemporaryDirectory() as where:
        root = Path(where)
        ca = trustme.CA()
        ca.cert_pem.write_to_path(root / "ca.pem")
        ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(root / "srv.pem")
        tls_args = ("--tls-cert", str(root / "srv.pem"), "--log-level", "warning")
        with (
            running_server_process(root / "https", args=tls_args) as https,
            running_server_process(root / "http", args=("--log-level", "warning")) as http,
        ):
            clients = {
                "http": _client(http, root / "ca.pem"),
                "https": _client(https, root / "ca.pem"),
            }
            times: dict[str, list[float]] = {
                f"{n} {k}": [] for n in clients for k in ("up", "down")
            }
            arrays = {}
            for name, client in clients.items():  # a warm-up run, and the arrays to fetch into
                client.send_update(weights, None, num_examples=1)
                arrays[name] = _fetch(client)
            for _ in range(args.repeat):
                for name, client in clients.items():
                    times[f"{name} up"].append(
                        _timed(lambda c=client: c.send_update(weights, None, num_examples=1))
                    )
                    times[f"{name} down"].append(
                        _timed(lambda c=client, a=arrays[name]: _fetch(c, a))
                    )
            for client in clients.values():
                client.close()
    size = args.mib << 20
    for kind in ("up", "down"):
        plain = statistics.median(times[f"http {kind}"])
        secure = statistics.median(times[f"https {kind}"])
        print(
            f"{kind:>4}: http {size / plain / 1e6:,.0f} MB/s, https {size / secure / 1e6:,.0f}"
            f" MB/s (medians of {args.repeat}); https takes {secure / plain:.2f}x the time"
        )


def _client(server: ServerProcess, ca: Path) -> WebClient:
    with AdminClient(server.url, server.admin_token, verify=ca) as admin:
        model = admin.create_model("tls", requirement="require_x_updates", requirement_args=[1])
    client = WebClient(model["id"], url=server.url, codec="msgpack", verify=ca, retries=0)
    client.register()
    return client


def _fetch(client: WebClient, into: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    latest = client.check_for_latest_model(update_after=-2, into=into)
    assert latest is not None, "the server holds a model after the first update"
    values: dict[str, np.ndarray] = latest["values"]
    return values


if __name__ == "__main__":
    main()
