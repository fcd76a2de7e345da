"""Resumable uploads survive what breaks them: cut connections, a killed client, a killed server.

Every upload here goes through the fault proxy, which counts the bytes that reached it:
the figure the issue bounds ("bytes sent in total"). Sizes are CI-sized; the full-size
run is ``python benchmarks/resumable.py``.
"""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest
from fault_proxy import Exchange, Fault, FaultProxy, fault_proxy
from reliability_figures import Figures
from reliability_support import check_data_dir, wait_for

from fma_connect import WebClient
from fma_connect.admin import AdminClient
from fma_connect.server.testing import RunningServer, running_server_process

CHUNK = 256 << 10
TOKEN = "resumable-token"


def _weights(seed: int, layers: int = 8, size: int = 1 << 20) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"layer{i}": rng.standard_normal(size).astype(np.float32) for i in range(layers)}


def _is_chunk(exchange: Exchange) -> bool:
    return exchange.method == "PUT" and "/chunks/" in exchange.path


def _sent(proxy: FaultProxy) -> int:
    """Bytes of request bodies that reached the proxy (cut ones as far as they came)."""
    return sum(len(e.body) for e in proxy.log)


def _payload_size(weights: dict[str, np.ndarray]) -> int:
    return sum(a.nbytes for a in weights.values())


def _client(url: str, model_id: int, **options: Any) -> WebClient:
    return WebClient(
        model_id,
        url=url,
        codec="msgpack",
        resumable_from=1 << 20,
        upload_chunk_size=CHUNK,
        **options,
    )


def _stored_equals(url: str, client: WebClient, weights: dict[str, np.ndarray]) -> bool:
    """Whether the model's latest aggregate (of this one update) is ``weights`` exactly."""
    direct = WebClient(client.federated_model_id, uuid=client.uuid, url=url, codec="msgpack")
    latest = direct.check_for_latest_model()
    assert latest is not None
    values = latest["values"]
    return all(np.array_equal(values[name], array) for name, array in weights.items())


class Halfway:
    """A plan that holds the 65th chunk request until released, then drops it: the moment
    a test kills a process mid-upload (every later chunk passes)."""

    def __init__(self, after: int = 64) -> None:
        self.after = after
        self.reached = threading.Event()
        self.release = threading.Event()
        self._chunks = 0

    def plan(self, exchange: Exchange) -> Fault | None:
        if not _is_chunk(exchange) or self.release.is_set():
            return None
        self._chunks += 1
        if self._chunks <= self.after:
            return None
        self.reached.set()
        self.release.wait(60)
        return Fault("drop-before")


def test_five_cuts_at_random_points_cost_only_the_cut_chunks(
    server: RunningServer, admin: AdminClient, sleeps: list[float], figures: Figures
) -> None:
    model = admin.create_model("cuts", requirement="require_x_updates", requirement_args=[1])
    weights = _weights(1)
    rng = random.Random(5)
    cut_at = set(rng.sample(range(1, 120), 5))  # which chunk requests are cut
    seen = {"chunks": 0}
    lock = threading.Lock()

    def plan(exchange: Exchange) -> Fault | None:
        if not _is_chunk(exchange):
            return None
        with lock:
            seen["chunks"] += 1
            number = seen["chunks"]
        return Fault("cut-request", keep=rng.randrange(CHUNK)) if number in cut_at else None

    shown: list[tuple[int, int | None]] = []
    with fault_proxy(server.url, plan) as proxy:
        client = _client(proxy.url, model["id"], progress=lambda *done: shown.append(done))
        client.register()
        update = client.send_update(weights)
        assert len(proxy.faults("cut-request")) == 5
        sent = _sent(proxy)
    # Progress never goes back (a cut chunk sent again counts once) and ends at the total.
    assert [done for done, _ in shown] == sorted({done for done, _ in shown})
    assert shown[-1][0] == shown[-1][1]
    (stored,) = admin.list_updates(model["id"])
    assert stored["id"] == update["id"]
    assert _stored_equals(server.url, client, weights)
    ratio = sent / _payload_size(weights)
    assert ratio <= 1.1, ratio
    figures.add("resumable", "uploads cut 5 times, stored once, bit-exact", 1)
    figures.set("resumable", "bytes sent / payload, 5 cuts", round(ratio, 3))


_CHILD = textwrap.dedent(
    f"""
    import sys
    import numpy as np
    from fma_connect import WebClient

    url, model_id, uuid, seed = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    rng = np.random.default_rng(seed)
    weights = {{f"layer{{i}}": rng.standard_normal(1 << 20).astype(np.float32) for i in range(8)}}
    client = WebClient(model_id, uuid=uuid, url=url, codec="msgpack",
                       resumable_from=1 << 20, upload_chunk_size={CHUNK})
    print(client.send_update(weights)["id"], flush=True)
    """
)


def test_a_client_killed_mid_upload_resumes_when_started_again(
    server: RunningServer, admin: AdminClient, tmp_path: Path, figures: Figures
) -> None:
    model = admin.create_model("restart", requirement="require_x_updates", requirement_args=[1])
    owner = WebClient(model["id"], url=server.url)
    owner.register()
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    halfway = Halfway()
    with fault_proxy(server.url, halfway.plan) as proxy:
        command = [sys.executable, str(script), proxy.url, str(model["id"]), owner.uuid, "3"]
        first = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        assert halfway.reached.wait(60), "the first process never got halfway"
        first.kill()
        first.wait()
        halfway.release.set()
        assert admin.list_updates(model["id"]) == []  # nothing partial is visible
        second = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
        sent = _sent(proxy)
    (stored,) = admin.list_updates(model["id"])
    assert int(second.stdout.strip()) == stored["id"]
    assert _stored_equals(server.url, owner, _weights(3))
    ratio = sent / _payload_size(_weights(3))
    assert ratio <= 1.2, ratio
    figures.add("resumable", "client SIGKILLed mid-upload, resumed, stored once", 1)
    figures.set("resumable", "bytes sent / payload, client killed and restarted", round(ratio, 3))


@pytest.mark.server_errors_expected("the killed server's connections fail in its log")
def test_a_server_killed_mid_upload_is_resumed_after_its_restart(
    tmp_path: Path, sleeps: list[float], figures: Figures
) -> None:
    data = tmp_path / "data"
    weights = _weights(4)
    halfway = Halfway()

    with running_server_process(data, admin_token=TOKEN, args=("--log-level", "warning")) as one:
        admin = AdminClient(one.url, TOKEN, retries=0)
        model = admin.create_model("crash", requirement="require_x_updates", requirement_args=[1])
        with fault_proxy(one.url, halfway.plan) as proxy:
            client = _client(proxy.url, model["id"], retries=8)
            client.register()
            outcome: dict[str, Any] = {}
            sender = threading.Thread(target=lambda: outcome.update(client.send_update(weights)))
            sender.start()
            assert halfway.reached.wait(60)
            one.kill()
            with running_server_process(
                data, admin_token=TOKEN, args=("--log-level", "warning")
            ) as two:
                parts = urlsplit(two.url)
                proxy.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
                halfway.release.set()
                sender.join(120)
                assert not sender.is_alive()
                admin = AdminClient(two.url, TOKEN, retries=0)
                (stored,) = admin.list_updates(model["id"])
                assert outcome["id"] == stored["id"]
                assert _stored_equals(two.url, client, weights)
                sent = _sent(proxy)
    counts = check_data_dir(data)
    assert counts["updates"] == 1 and counts["aggregates"] == 1
    assert not any((data / "uploads").iterdir())  # the finished upload's file is gone
    ratio = sent / _payload_size(weights)
    assert ratio <= 1.2, ratio
    figures.add("resumable", "server SIGKILLed mid-upload, resumed after restart", 1)
    figures.set("resumable", "bytes sent / payload, server killed and restarted", round(ratio, 3))


def test_concurrent_clients_resume_at_once_and_each_update_is_stored_once(
    server: RunningServer, admin: AdminClient, sleeps: list[float]
) -> None:
    model = admin.create_model("many", requirement="require_x_updates", requirement_args=[99])
    cuts = {"n": 0}
    lock = threading.Lock()

    def plan(exchange: Exchange) -> Fault | None:
        if not _is_chunk(exchange):
            return None
        with lock:
            cuts["n"] += 1
            cut = cuts["n"] % 7 == 0
        return Fault("cut-request", keep=1000) if cut else None

    with fault_proxy(server.url, plan) as proxy:
        clients = [_client(proxy.url, model["id"]) for _ in range(4)]
        for client in clients:
            client.register()
        results: dict[int, dict[str, Any]] = {}

        def send(i: int) -> None:
            results[i] = clients[i].send_update(_weights(10 + i, layers=4))

        threads = [threading.Thread(target=send, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        wait_for(lambda: len(results) == 4, "four uploads")
    stored = admin.list_updates(model["id"])
    assert sorted(u["id"] for u in stored) == sorted(r["id"] for r in results.values())
    assert {u["client"] for u in stored} == {c.uuid for c in clients}


def test_a_download_cut_five_times_resumes_and_is_bit_exact(
    server: RunningServer, admin: AdminClient, sleeps: list[float], figures: Figures
) -> None:
    model = admin.create_model("down", requirement="require_x_updates", requirement_args=[1])
    weights = _weights(6)
    owner = _client(server.url, model["id"])
    owner.register()
    owner.send_update(weights)
    size = _payload_size(weights)
    rng = random.Random(6)
    cuts = iter(sorted(rng.sample(range(size), 5)))  # where in the body each cut falls
    state = {"next": next(cuts), "held": 0}
    lock = threading.Lock()

    def plan(exchange: Exchange) -> Fault | None:
        if exchange.method != "GET" or "get_latest_model" not in exchange.path:
            return None
        with lock:
            if state["next"] < 0:
                return None
            asked = exchange.headers.get("range", "bytes=0-")
            start = int(asked.removeprefix("bytes=").split("-")[0])
            keep = max(0, state["next"] - start)
            state["next"] = next(cuts, -1)
        # Closed, not reset: a reset makes the client's kernel drop what it had received
        # but not yet read, which on loopback is most of what was sent.
        return Fault("truncate-response", keep=keep)

    with fault_proxy(server.url, plan) as proxy:
        client = WebClient(model["id"], uuid=owner.uuid, url=proxy.url, codec="msgpack")
        latest = client.check_for_latest_model()
        received = sum(e.returned for e in proxy.log if "get_latest_model" in e.path)
        assert len(proxy.faults("truncate-response")) == 5
    assert latest is not None
    assert all(np.array_equal(latest["values"][k], v) for k, v in weights.items())
    ratio = received / size
    assert ratio <= 1.1, ratio
    figures.add("resumable", "downloads cut 5 times, resumed, bit-exact", 1)
    figures.set("resumable", "bytes received / payload, 5 cuts", round(ratio, 3))


def test_chunks_answered_503_are_sent_again_and_the_upload_completes(
    server: RunningServer, admin: AdminClient, sleeps: list[float]
) -> None:
    model = admin.create_model("busy", requirement="require_x_updates", requirement_args=[1])
    weights = _weights(7, layers=2)
    answered = {"n": 0}
    lock = threading.Lock()

    def plan(exchange: Exchange) -> Fault | None:
        if not _is_chunk(exchange):
            return None
        with lock:
            answered["n"] += 1
            busy = answered["n"] in (3, 10, 11)  # two in a row on one chunk, too
        return Fault("answer", status=503, headers={"Retry-After": "1"}) if busy else None

    with fault_proxy(server.url, plan) as proxy:
        client = _client(proxy.url, model["id"])
        client.register()
        update = client.send_update(weights)
        assert len(proxy.faults("answer")) == 3
    (stored,) = admin.list_updates(model["id"])
    assert stored["id"] == update["id"]
    assert _stored_equals(server.url, client, weights)
