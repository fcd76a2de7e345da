"""The wire benchmark's large-payload comparisons, each run in a worker process of its own.

``python -m fma_connect.bench.wire_ops SPEC`` runs the comparison a JSON spec names and
prints its figures as one JSON line (as :mod:`.worker` does for the main benchmark), so
the client's peak memory is this process's alone and the servers run apart from it.

Each comparison alternates its paths (:func:`.wire.alternate`) and answers, per path,
its best seconds, every run's seconds, the client's and the watched server's peaks and,
where a path reports them, its seconds per stage. The spec holds the size in bytes, the
timed runs and whether to warm up, and the peers' URLs (``bare``: the bare-socket
server of :mod:`.wire_servers`; ``serve``: ``fma-connect serve``, with its admin
``token``, ``pid`` and ``blobs`` directory).
"""

from __future__ import annotations

import cProfile
import dataclasses
import http.client
import json
import os
import pstats
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import requests

from ..admin import AdminClient
from ..clients import WebClient
from ..codecs import msgpack_numpy
from ..plugins import default_codec_registry
from ..spec import flatten
from .measure import make_model, timed
from .ops import _join
from .wire import (
    READ_SLICE,
    Best,
    Contender,
    Stages,
    address,
    alternate,
    bare_get_into,
    bare_post,
    durable_write,
)
from .wire_budget import cores, least_budget

__all__ = ["OPS", "Models", "crc32_implementation", "fresh_buffer", "run_op"]

Spec = dict[str, Any]
#: The client identity sent to the bare peer, which checks none.
SINK_UUID = "00000000-0000-4000-8000-00000000b000"
_MSGPACK = "msgpack"
_LATEST = "/api/v1/models/1/get_latest_model/"


def crc32_implementation() -> str:
    """Which crc32 the msgpack codec uses here: ``isal`` (ISA-L) or ``zlib``."""
    return "isal" if msgpack_numpy.crc32 is not zlib.crc32 else "zlib"


def _payload(size: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The model as ``send_update`` takes it, and its msgpack body in one buffer."""
    model = make_model(size)
    body = np.frombuffer(_join(default_codec_registry().get(_MSGPACK).encode(model)), np.uint8)
    return dict(model), body


def _figures(best: dict[str, Best]) -> dict[str, Any]:
    return {name: dataclasses.asdict(b) for name, b in best.items()}


class Models:
    """Fresh federated models on the reference server, each with a registered client."""

    def __init__(self, spec: Spec) -> None:
        self.url = spec["serve"]
        self.admin = AdminClient(self.url, spec["token"])
        self.model_id = 0
        self.client: WebClient | None = None

    def fresh(self, **options: Any) -> WebClient:
        """Create a model and a client of it (more ``WebClient`` ``options``); the client
        is :attr:`client` until :meth:`drop`."""
        model = self.admin.create_model(
            "wire-bench", requirement="require_x_updates", requirement_args=[1]
        )
        self.model_id = int(model["id"])
        self.client = WebClient(self.model_id, url=self.url, codec=_MSGPACK, **options)
        self.client.register()
        return self.client

    def drop(self) -> None:
        """Close the client and delete its model (and so the blobs it stored)."""
        if self.client is not None:
            self.client.close()
            self.client = None
            self.admin.delete_model(self.model_id)

    def close(self) -> None:
        """Drop the current model, if any, and close the admin client."""
        self.drop()
        self.admin.close()


def _top_functions(profile: cProfile.Profile, count: int = 8) -> list[dict[str, Any]]:
    """The functions that took the most time themselves, for the report."""
    stats = pstats.Stats(profile)
    rows = []
    table: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    for (filename, line, name), (_, calls, own, _total, _) in table.items():
        where = Path(filename).name if filename != "~" else ""
        label = f"{where}:{line} {name}" if where else name
        rows.append({"function": label, "seconds": own, "calls": calls})
    rows.sort(key=lambda row: -float(row["seconds"]))
    return rows[:count]


def op_client_upload(spec: Spec) -> Spec:
    """``send_update`` to the bare sink vs ``requests.post`` and a bare POST of its bytes."""
    weights, body = _payload(spec["size"])
    # requests sends bytes with one sendall, but iterates a buffer (a memoryview) byte by byte.
    data = body.tobytes()
    del body
    codec = default_codec_registry().get(_MSGPACK)
    url = spec["bare"] + "/api/v1/model_updates/?federated_model=1"
    headers = {"Content-Type": codec.media_type, "CLIENT-UUID": SINK_UUID}
    with (
        requests.Session() as session,
        WebClient(1, SINK_UUID, spec["bare"], codec=_MSGPACK) as client,
    ):

        def plain() -> None:
            session.post(url, data=data, headers=headers).close()

        best = alternate(
            [
                Contender("ours", lambda: client.send_update(weights)),
                Contender("peer", plain),
                Contender("bare", lambda: bare_post(spec["bare"], data)),
            ],
            spec["repeat"],
            spec["warmup"],
            prime=spec["size"],
        )
        profile = cProfile.Profile()
        profile.runcall(client.send_update, weights)
    tensors, _ = flatten(weights)
    repeat = spec["repeat"]
    stages = {
        "flatten": timed(lambda: flatten(weights), repeat)[0].seconds,
        "encode (crc32 included)": timed(lambda: codec.encode(tensors), repeat)[0].seconds,
        f"crc32 ({crc32_implementation()}, the codec's)": timed(
            lambda: msgpack_numpy.crc32(data), repeat
        )[0].seconds,
        "crc32 (zlib)": timed(lambda: zlib.crc32(data), repeat)[0].seconds,
    }
    try:
        from isal import isal_zlib

        stages["crc32 (isal)"] = timed(lambda: isal_zlib.crc32(data), repeat)[0].seconds
    except ImportError:
        pass
    return {
        "paths": _figures(best),
        "payload": int(sum(a.nbytes for a in weights.values())),
        "wire": len(data),
        "stages": stages,
        "profile": _top_functions(profile),
        "crc32": crc32_implementation(),
    }


def op_client_download(spec: Spec) -> Spec:
    """``check_for_latest_model`` from the bare source vs ``http.client`` ``readinto``."""
    codec = default_codec_registry().get(_MSGPACK)
    headers = {"CLIENT-UUID": SINK_UUID, "Accept": codec.media_type}
    conn = http.client.HTTPConnection(*address(spec["bare"]))

    def get_into(target: memoryview | None) -> int:
        conn.request("GET", _LATEST, headers=headers)
        response = conn.getresponse()
        length = int(response.getheader("Content-Length") or 0)
        if target is None:  # the probe: learn the length
            response.read()
            return length
        got = 0
        while got < length:
            n = response.readinto(target[got : got + READ_SLICE])
            if not n:
                raise RuntimeError(f"short read: {got} of {length} bytes")
            got += n
        return length

    length = get_into(None)
    buffer = np.zeros(length, np.uint8)  # preallocated and touched: the peer's best case
    arrays = _arrays_of(codec.decode(_probe_body(spec["bare"], headers)))  # touched too
    with WebClient(1, SINK_UUID, spec["bare"], codec=_MSGPACK) as client:

        def ours(into: Any = None) -> Any:
            latest = client.check_for_latest_model(update_after=-1, into=into)
            if latest is None:
                raise RuntimeError("the bare source sent no model")
            return latest

        best = alternate(
            [
                Contender("ours", ours),
                Contender("into", lambda: ours(arrays)),
                Contender("peer", lambda: get_into(buffer.data)),
                Contender("peer_fresh", lambda: get_into(fresh_buffer(length))),
            ],
            spec["repeat"],
            spec["warmup"],
            prime=spec["size"],
        )
    conn.close()
    tensors = codec.decode(buffer.data)
    payload = int(sum(a.nbytes for _, a in tensors))
    del tensors
    repeat = spec["repeat"]

    def fresh_touch() -> None:
        np.empty(length, np.uint8).fill(1)  # the page faults a new receive buffer costs

    stages = {
        "decode (crc32 included)": timed(lambda: codec.decode(buffer.data), repeat)[0].seconds,
        "first touch of a fresh buffer": timed(fresh_touch, repeat)[0].seconds,
        "touch of a touched buffer": timed(lambda: buffer.fill(1), repeat)[0].seconds,
    }
    return {"paths": _figures(best), "payload": payload, "wire": length, "stages": stages}


def op_server_ingest(spec: Spec) -> Spec:
    """``send_update`` into ``fma-connect serve`` (and with one chunk in flight) vs a
    durable write, the bare sink storing the body (hashed, durably), bare and ASGI POSTs;
    then the CPU the ingest's passes need (:func:`.wire_budget.least_budget`)."""
    weights, body = _payload(spec["size"])
    models = Models(spec)
    blobs = Path(spec["blobs"])
    removals: list[Callable[[], None]] = []

    def ours() -> None:
        assert models.client is not None
        models.client.send_update(weights)

    def remove() -> None:
        while removals:
            removals.pop()()

    stored = f"floor-{os.getpid()}.bin"  # where the bare sink stores the body

    try:
        best = alternate(
            [
                Contender("ours", ours, models.fresh, models.drop, spec["pid"]),
                Contender(
                    "one_in_flight",
                    ours,
                    lambda: models.fresh(upload_in_flight=1),
                    models.drop,
                    spec["pid"],
                ),
                Contender(
                    "durable", lambda: removals.append(durable_write(blobs, body)), None, remove
                ),
                Contender(
                    "floor",
                    lambda: bare_post(spec["bare"], body, f"/store/{stored}"),
                    None,
                    lambda: (blobs / stored).unlink(missing_ok=True),
                ),
                Contender("discard", lambda: bare_post(spec["bare"], body)),
                Contender("asgi", lambda: bare_post(spec["empty"], body, "/empty/")),
            ],
            spec["repeat"],
            spec["warmup"],
            prime=spec["size"],
        )
    finally:
        models.close()
    budget = least_budget(list(weights.values()), body, blobs, spec["repeat"])
    payload = int(sum(a.nbytes for a in weights.values()))
    return {
        "paths": _figures(best),
        "payload": payload,
        "wire": int(body.nbytes),
        "budget": budget,
        "cores": cores(),
    }


def op_server_egress(spec: Spec) -> Spec:
    """``check_for_latest_model`` from serve vs bare GETs of as many bytes (socket, ASGI)."""
    weights, body = _payload(spec["size"])
    models = Models(spec)
    try:
        client = models.fresh()
        client.send_update(weights)
        models.admin.aggregate(models.model_id)
        del body
        length = _served_length(client, models.model_id)
        buffer = np.zeros(length, np.uint8)
        arrays = _arrays_of(list(weights.items()))

        def ours(into: Any = None) -> Any:
            latest = client.check_for_latest_model(update_after=-1, into=into)
            if latest is None:
                raise RuntimeError("the server sent no model")
            return latest

        best = alternate(
            [
                Contender("ours", ours, watch_pid=spec["pid"]),
                Contender("into", lambda: ours(arrays), watch_pid=spec["pid"]),
                Contender("peer", lambda: bare_get_into(spec["bare"], buffer.data)),
                Contender("peer_fresh", lambda: bare_get_into(spec["bare"], fresh_buffer(length))),
                Contender("asgi", lambda: bare_get_into(spec["empty"], buffer.data, "/bytes/")),
            ],
            spec["repeat"],
            spec["warmup"],
            prime=spec["size"],
        )
    finally:
        models.close()
    payload = int(sum(a.nbytes for a in weights.values()))
    return {"paths": _figures(best), "payload": payload, "wire": length}


def fresh_buffer(nbytes: int) -> memoryview:
    """A new receive buffer, allocated as the client allocates one for a download
    (``_downloads.py``): what a peer reads into to pay the same first touch of memory."""
    return np.empty(nbytes, np.uint8).data


def _arrays_of(tensors: Sequence[tuple[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Touched arrays of the tensors' names, dtypes and shapes: what a client that fetches
    every round receives into (``into=``)."""
    return {name: np.ones_like(array) for name, array in tensors}


def _probe_body(url: str, headers: dict[str, str]) -> bytes:
    """The body the bare source serves, read once."""
    with requests.get(url.rstrip("/") + _LATEST, headers=headers, timeout=60) as response:
        response.raise_for_status()
        return response.content


def _served_length(client: WebClient, model_id: int) -> int:
    """The Content-Length of the model's latest weights as the server sends them."""
    codec = default_codec_registry().get(_MSGPACK)
    url = f"{client.url.rstrip('/')}/api/v1/models/{model_id}/get_latest_model/"
    headers = {"CLIENT-UUID": client.uuid, "Accept": codec.media_type}
    with requests.get(url, headers=headers, stream=True) as response:
        response.raise_for_status()
        return int(response.headers["Content-Length"])


def op_round_trip(spec: Spec) -> Spec:
    """Send, the server's round over that update, fetch vs the sum of the stages' ceilings."""
    weights, body = _payload(spec["size"])
    models = Models(spec)
    blobs = Path(spec["blobs"])
    result = np.zeros(body.nbytes, np.uint8)  # the mean's output, preallocated and touched
    received = np.zeros(body.nbytes, np.uint8)
    removals: list[Callable[[], None]] = []

    arrays = _arrays_of(list(weights.items()))

    def ours(into: Any = None) -> Stages:
        client = models.client
        assert client is not None
        started = time.perf_counter()
        client.send_update(weights)
        sent = time.perf_counter()
        models.admin.aggregate(models.model_id)
        averaged = time.perf_counter()
        if client.check_for_latest_model(update_after=-1, into=into) is None:
            raise RuntimeError("no model came back")
        fetched = time.perf_counter()
        return Stages(send=sent - started, round=averaged - sent, fetch=fetched - averaged)

    def ceilings(fresh: bool = False) -> Stages:
        stages = Stages()

        def stage(name: str, work: Callable[[], Any]) -> None:
            started = time.perf_counter()
            work()
            stages[name] = time.perf_counter() - started

        stage("bare POST", lambda: bare_post(spec["bare"], body))
        stage("durable write", lambda: removals.append(durable_write(blobs, body)))
        stage("mean at memcpy speed", lambda: np.copyto(result, body))
        stage("durable write of the result", lambda: removals.append(durable_write(blobs, result)))
        into = fresh_buffer(body.nbytes) if fresh else received.data
        stage("bare GET", lambda: bare_get_into(spec["bare"], into))
        return stages

    def remove() -> None:
        while removals:
            removals.pop()()

    try:
        best = alternate(
            [
                Contender("ours", ours, models.fresh, models.drop, spec["pid"]),
                Contender("into", lambda: ours(arrays), models.fresh, models.drop, spec["pid"]),
                Contender("peer", ceilings, None, remove),
                Contender("peer_fresh", lambda: ceilings(fresh=True), None, remove),
            ],
            spec["repeat"],
            spec["warmup"],
            prime=spec["size"],
        )
    finally:
        models.close()
    payload = int(sum(a.nbytes for a in weights.values()))
    return {"paths": _figures(best), "payload": payload, "wire": int(body.nbytes)}


def _small_requests(spec: Spec) -> Spec:
    from .wire_small import op_small_requests

    return op_small_requests(spec)


OPS: dict[str, Callable[[Spec], Spec]] = {
    "client_upload": op_client_upload,
    "client_download": op_client_download,
    "server_ingest": op_server_ingest,
    "server_egress": op_server_egress,
    "round_trip": op_round_trip,
    "small_requests": _small_requests,
}


def run_op(spec: Spec) -> Spec:
    """Run the comparison a spec names."""
    return OPS[spec["op"]](spec)


if __name__ == "__main__":
    print(json.dumps(run_op(json.loads(sys.argv[1]))), flush=True)
