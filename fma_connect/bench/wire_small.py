"""The wire benchmark's small requests: latency of a poll and of a 1 MB update, and polls/s.

Each is measured against ``fma-connect serve`` and against the empty routes of
:mod:`.wire_servers` (``empty``), which run on the same ASGI server with the same
options: the difference is what our routes, our storage and our client add to a request
the ASGI server carries anyway. Latency is sampled per request in alternating batches
(one batch of ours, one of the peer's, ...) and given as p50/p99 over every sample;
polls per second come from 64 client threads, each with its own client and connection,
started together, best of the alternating runs: once with ``WebClient`` against
``requests`` on the empty route (what a user's clients see; one Python process of them
may load itself more than the server), once with bare-socket clients on both (the
server's overhead alone).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import requests

from ..clients import WebClient
from ..plugins import default_codec_registry
from .wire import Caller, Contender, alternate, bare_caller, hammer, percentile
from .wire_ops import Models

__all__ = ["THREADS", "UPDATE_BYTES", "op_small_requests"]

Spec = dict[str, Any]
#: Concurrent clients of the polls-per-second comparison.
THREADS = 64
#: The payload of the small update.
UPDATE_BYTES = 1_000_000


def _latencies(ours: Callable[[], Any], peer: Callable[[], Any], count: int, batches: int) -> Spec:
    """p50/p99 seconds of ``count`` calls of each, made in alternating batches."""
    samples: dict[str, list[float]] = {"ours": [], "peer": []}
    per_batch = max(count // batches, 1)

    def batch(name: str, call: Callable[[], Any]) -> Callable[[], None]:
        def run() -> None:
            for _ in range(per_batch):
                started = time.perf_counter()
                call()
                samples[name].append(time.perf_counter() - started)

        return run

    contenders = [Contender("ours", batch("ours", ours)), Contender("peer", batch("peer", peer))]
    alternate(contenders, 1, warmup=False)  # a batch each to warm up: connections, caches
    for values in samples.values():
        values.clear()
    alternate(contenders, batches, warmup=False)
    return {
        name: {"p50": percentile(v, 0.5), "p99": percentile(v, 0.99), "count": len(v)}
        for name, v in samples.items()
    }


def op_small_requests(spec: Spec) -> Spec:
    """Poll and 1 MB update latency against serve and the empty route; polls/s with 64 clients.

    Spec keys beyond the common ones: ``empty`` (the empty routes' URL), ``polls`` and
    ``updates`` (latency samples of each), ``calls`` (polls per thread per run).
    """
    codec = default_codec_registry().get("msgpack")
    models = Models(spec)
    empty = spec["empty"].rstrip("/") + "/empty/"
    try:
        client = models.fresh()
        # Updates must keep the model's shapes: the first is the 1 MB one, aggregated.
        weights = {"w": np.ones(UPDATE_BYTES // 4, np.float32)}
        client.send_update(weights)
        aggregate = int(models.admin.aggregate(models.model_id)["id"])
        uuid, model_id = client.uuid, models.model_id
        poll_url = f"{models.url.rstrip('/')}/api/v1/models/{model_id}/get_latest_aggregate/"
        headers = {"CLIENT-UUID": uuid}

        def poll() -> None:
            if client.check_for_new_model_aggregate(update_after=aggregate) is not None:
                raise RuntimeError("the poll saw a new aggregate; nothing was sent")

        with requests.Session() as session:

            def empty_get() -> None:
                session.get(empty, headers=headers).raise_for_status()

            polls = _latencies(poll, empty_get, spec["polls"], spec["batches"])
            body = b"".join(bytes(memoryview(c)) for c in codec.encode(list(weights.items())))
            upload_headers = {**headers, "Content-Type": codec.media_type}

            def empty_post() -> None:
                session.post(empty, data=body, headers=upload_headers).raise_for_status()

            updates = _latencies(
                lambda: client.send_update(weights), empty_post, spec["updates"], spec["batches"]
            )

        def web_client() -> Caller:
            mine = WebClient(model_id, uuid, models.url)
            return (lambda: mine.check_for_new_model_aggregate(update_after=aggregate)), mine.close

        def plain() -> Caller:
            session = requests.Session()
            return (lambda: session.get(empty, headers=headers).raise_for_status()), session.close

        def bare(url: str) -> Callable[[], Caller]:
            where = urlsplit(url)
            return lambda: bare_caller(url, where.path, headers)

        makers = {
            "ours": web_client,
            "peer": plain,
            "server": bare(poll_url),
            "server_peer": bare(empty),
        }
        seconds: dict[str, list[float]] = {name: [] for name in makers}

        def concurrent(name: str) -> Callable[[], None]:
            return lambda: seconds[name].append(hammer(THREADS, spec["calls"], makers[name]))

        alternate([Contender(n, concurrent(n)) for n in makers], spec["repeat"], warmup=False)
    finally:
        models.close()
    rates = {n: THREADS * spec["calls"] / min(s) for n, s in seconds.items()}
    return {"polls": polls, "updates": updates, "rates": rates, "threads": THREADS}
