"""32 concurrent clients x 10 updates each against the real server, some resent.

Every client is its own WebClient in its own thread, talking through a proxy that
breaks some first attempts (the connection dropped after the server stored the
update, dropped before it saw it, or a 503), so those updates are resent with their
Idempotency-Key. Exactly 320 updates must be stored, one per key, and the round over
them must equal a numpy reference computed from the inputs.
"""

from __future__ import annotations

import threading
from typing import Any

from fault_proxy import Exchange, Fault, fault_proxy
from reliability_figures import Figures
from reliability_support import (
    COMPLETE,
    as_received,
    assert_tree_equal,
    check_data_dir,
    make_tree,
    reference_mean,
)

from fma_connect import WebClient
from fma_connect.admin import AdminClient
from fma_connect.server.testing import RunningServer

CLIENTS = 32
UPDATES_EACH = 10
TOTAL = CLIENTS * UPDATES_EACH
CODECS = ("msgpack", "npz-b64", "json")


def _faults() -> Any:
    """Break the first attempt of some updates, by the order their keys first arrive."""
    seen: dict[str, int] = {}
    lock = threading.Lock()

    def plan(exchange: Exchange) -> Fault | None:
        key = exchange.headers.get("idempotency-key")
        if exchange.method != "POST" or key is None:
            return None
        with lock:
            if key in seen:
                return None
            seen[key] = n = len(seen)
        if n % 7 == 0:
            return Fault("drop-after")
        if n % 11 == 5:
            return Fault("drop-before")
        if n % 13 == 3:
            return Fault("answer", status=503, headers={"Retry-After": "0"})
        return None

    return plan


def test_32_clients_x_10_updates_with_resends(
    data_dir: Any, server: RunningServer, admin: AdminClient, figures: Figures
) -> None:
    model = admin.create_model("load", requirement="require_x_updates", requirement_args=[TOTAL])
    sent: dict[int, tuple[dict[str, Any], str]] = {}  # update id -> (weights, codec)
    errors: list[BaseException] = []
    sent_lock = threading.Lock()
    start = threading.Barrier(CLIENTS)

    def run(index: int, url: str) -> None:
        codec = CODECS[index % len(CODECS)]
        try:
            with WebClient(model["id"], url=url, codec=codec, retry_updates=True) as client:
                client.register()
                start.wait(timeout=120)
                for n in range(UPDATES_EACH):
                    tree = make_tree(index * 1000 + n)
                    answer = client.send_update(tree)
                    with sent_lock:
                        assert answer["id"] not in sent, "two updates answered with one id"
                        sent[answer["id"]] = (tree, codec)
        except BaseException as exc:
            errors.append(exc)

    with fault_proxy(server.url, _faults()) as proxy:
        threads = [
            threading.Thread(target=run, args=(i, proxy.url), name=f"client-{i}")
            for i in range(CLIENTS)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)
    assert not any(thread.is_alive() for thread in threads), "a client hung"
    assert errors == []
    assert len(sent) == TOTAL

    stored = admin.list_updates(model["id"])
    assert len(stored) == TOTAL
    assert sorted(u["id"] for u in stored) == sorted(sent)
    assert {u["status"] for u in stored} == {COMPLETE}
    (aggregate,) = admin.list_aggregates(model["id"])
    assert {u["applied_aggregate"] for u in stored} == {aggregate["id"]}
    counts = check_data_dir(data_dir)
    assert counts["updates"] == TOTAL

    # The round summed the updates in arrival (id) order, as the reference does.
    template = make_tree(0)
    received = [as_received(*sent[i]) for i in sorted(sent)]
    expected = reference_mean(received, template)
    reader = WebClient(model["id"], url=server.url, codec="msgpack")
    reader.register()
    latest = reader.check_for_latest_model(like=template)
    assert latest is not None and latest["aggregate"] == aggregate["id"]
    assert_tree_equal(latest["values"], expected)

    posts = [e for e in proxy.log if e.method == "POST" and "model_updates" in e.path]
    faults = [e.fault.kind for e in posts if e.fault is not None]
    assert len(posts) == TOTAL + len(faults)
    figures.set("load", "clients x updates", f"{CLIENTS} x {UPDATES_EACH}")
    figures.set("load", "update POSTs received by the proxy", len(posts))
    figures.set("load", "first attempts broken (resent)", len(faults))
    for kind in sorted(set(faults)):
        figures.set("load", f"broken by {kind}", faults.count(kind))
    figures.set("load", "updates stored", len(stored))
    figures.set("load", "updates stored beyond one per key", len(stored) - TOTAL)
    figures.set("load", "aggregate equals numpy reference", True)
