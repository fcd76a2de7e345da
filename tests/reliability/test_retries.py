"""Client retries against the real reference server, through a fault-injecting proxy.

A resent update (same Idempotency-Key) is stored once, whatever broke: the connection
before the server saw the request, or after it stored it. 429/503 Retry-After is
honoured (capped), other retryable statuses back off with full jitter, and the counts
of attempts are what the documentation says. Sleeps are recorded, not slept, so no
test depends on the wall clock.
"""

from __future__ import annotations

import concurrent.futures
import socket
from typing import Any

import numpy as np
import pytest
import requests
from fault_proxy import Exchange, Fault, fault_proxy, once_per_key
from reliability_figures import Figures

from fma_connect import APIError, ConnectError, WebClient
from fma_connect._transport import DEFAULT_RETRIES, DEFAULT_TIMEOUT
from fma_connect.admin import AdminClient
from fma_connect.server.testing import RunningServer

UPDATES = "/api/v1/model_updates/"


@pytest.fixture
def model_id(admin: AdminClient) -> int:
    # A high requirement: no round runs, so every stored update stays listed as sent.
    model = admin.create_model("retries", requirement="require_x_updates", requirement_args=[99])
    return int(model["id"])


def _weights(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"w": rng.standard_normal((4, 3)).astype(np.float32), "b": np.arange(3.0)}


def _posts(log: list[Exchange]) -> list[Exchange]:
    return [e for e in log if e.method == "POST" and e.path.startswith(UPDATES)]


@pytest.mark.parametrize("codec", ["json", "msgpack", "npz-b64"])
@pytest.mark.parametrize("kind", ["drop-after", "drop-before"])
def test_a_resent_update_is_stored_once(
    server: RunningServer,
    admin: AdminClient,
    model_id: int,
    sleeps: list[float],
    figures: Figures,
    codec: str,
    kind: str,
) -> None:
    with fault_proxy(server.url, once_per_key(kind)) as proxy:
        client = WebClient(model_id, url=proxy.url, codec=codec, retry_updates=True)
        client.register()
        sent = client.send_update(_weights(1))
    posts = _posts(proxy.log)
    assert len(posts) == 2, "one lost attempt, one resend"
    assert posts[0].headers["idempotency-key"] == posts[1].headers["idempotency-key"]
    assert posts[0].body == posts[1].body
    # drop-after: the server stored the first attempt (201) and answers the resend with
    # that same update (200); drop-before: the server only ever saw the resend.
    assert [p.status for p in posts] == ([201, 200] if kind == "drop-after" else [None, 201])
    (stored,) = admin.list_updates(model_id)
    assert stored["id"] == sent["id"]
    assert len(sleeps) == 1
    figures.add("retries", f"updates resent after {kind}, stored once", 1)


def test_without_retry_updates_an_unknown_outcome_is_raised_not_resent(
    server: RunningServer, admin: AdminClient, model_id: int, sleeps: list[float]
) -> None:
    with fault_proxy(server.url, once_per_key("drop-after")) as proxy:
        client = WebClient(model_id, url=proxy.url, codec="msgpack")
        client.register()
        with pytest.raises(ConnectError, match="outcome is unknown"):
            client.send_update(_weights(2))
    assert len(_posts(proxy.log)) == 1
    assert len(admin.list_updates(model_id)) == 1  # the server did store it
    assert sleeps == []


def test_the_same_key_from_a_concurrent_resend_stores_one_update(
    server: RunningServer, admin: AdminClient, model_id: int
) -> None:
    # Requests with one key racing each other (a resend overtaking a slow first
    # attempt): one is stored (201), every answer names it.
    client = WebClient(model_id, url=server.url)
    uuid = client.uuid
    body = {"federated_model": model_id, "data": [[1.0, 2.0], [3.0]], "base_aggregate": None}
    headers = {"CLIENT-UUID": uuid, "Idempotency-Key": "race-1"}

    def post(_: int) -> tuple[int, int]:
        response = requests.post(server.url + UPDATES, json=body, headers=headers, timeout=30)
        return response.status_code, int(response.json()["id"])

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(post, range(8)))
    assert sorted(status for status, _ in answers) == [200] * 7 + [201]
    assert {update_id for _, update_id in answers} == {admin.list_updates(model_id)[0]["id"]}
    assert len(admin.list_updates(model_id)) == 1


def _answer_first(n: int, status: int, headers: dict[str, str], method: str) -> Any:
    count = {"n": 0}

    def plan(exchange: Exchange) -> Fault | None:
        if exchange.method != method or "register_client" in exchange.path:
            return None
        count["n"] += 1
        return Fault("answer", status=status, headers=headers) if count["n"] <= n else None

    return plan


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_is_honoured_for_gets_and_resent_updates(
    server: RunningServer,
    model_id: int,
    sleeps: list[float],
    figures: Figures,
    status: int,
) -> None:
    with fault_proxy(server.url, _answer_first(2, status, {"Retry-After": "7"}, "GET")) as proxy:
        client = WebClient(model_id, url=proxy.url)
        assert client.check_for_new_model_aggregate() is None
    assert sleeps == [7.0, 7.0]
    sleeps.clear()
    with fault_proxy(server.url, _answer_first(2, status, {"Retry-After": "5"}, "POST")) as proxy:
        client = WebClient(model_id, url=proxy.url, retry_updates=True)
        client.register()
        client.send_update(_weights(3))
    assert sleeps == [5.0, 5.0]
    figures.add("retries", f"Retry-After honoured ({status}, GET and POST)", 4)


def test_retry_after_is_capped(server: RunningServer, model_id: int, sleeps: list[float]) -> None:
    day = {"Retry-After": "86400"}
    with fault_proxy(server.url, _answer_first(1, 503, day, "GET")) as proxy:
        WebClient(model_id, url=proxy.url).check_for_new_model_aggregate()
    with fault_proxy(server.url, _answer_first(1, 503, day, "POST")) as proxy:
        client = WebClient(model_id, url=proxy.url, retry_updates=True)
        client.register()
        client.send_update(_weights(4))
    assert sleeps == [30.0, 30.0]


def test_without_retry_after_the_backoff_is_full_jitter(
    server: RunningServer, model_id: int, sleeps: list[float]
) -> None:
    # GETs (urllib3): the first retry at once, then sleeps drawn from [0, 0.5 * 2**(n-1)].
    with fault_proxy(server.url, _answer_first(3, 502, {}, "GET")) as proxy:
        WebClient(model_id, url=proxy.url).check_for_new_model_aggregate()
    assert len(sleeps) == 2
    for slept, bound in zip(sleeps, [1.0, 2.0], strict=True):
        assert 0.0 <= slept <= bound
    sleeps.clear()
    # Resent updates: a sleep drawn from [0, 0.5 * 2**attempt] before each resend.
    with fault_proxy(server.url, _answer_first(3, 502, {}, "POST")) as proxy:
        client = WebClient(model_id, url=proxy.url, retry_updates=True)
        client.register()
        client.send_update(_weights(5))
    assert len(sleeps) == 3
    for slept, bound in zip(sleeps, [0.5, 1.0, 2.0], strict=True):
        assert 0.0 <= slept <= bound


def test_retry_counts_are_as_documented(
    server: RunningServer, model_id: int, sleeps: list[float], figures: Figures
) -> None:
    assert (DEFAULT_RETRIES, DEFAULT_TIMEOUT) == (3, (10.0, 120.0))
    always = _answer_first(10**6, 503, {"Retry-After": "1"}, "GET")
    with fault_proxy(server.url, always) as proxy:
        client = WebClient(model_id, url=proxy.url)
        client.register()
        with pytest.raises(APIError) as refused:
            client.check_for_new_model_aggregate()
    assert refused.value.status_code == 503
    gets = [e for e in proxy.log if e.method == "GET"]
    assert len(gets) == 1 + DEFAULT_RETRIES
    always = _answer_first(10**6, 503, {"Retry-After": "1"}, "POST")
    with fault_proxy(server.url, always) as proxy:
        client = WebClient(model_id, url=proxy.url, retries=5, retry_updates=True)
        client.register()
        with pytest.raises(APIError):
            client.send_update(_weights(6))
    assert len(_posts(proxy.log)) == 1 + 5
    # And none at all with retries=0.
    with fault_proxy(server.url, always) as proxy:
        client = WebClient(model_id, url=proxy.url, retries=0, retry_updates=True)
        client.register()
        with pytest.raises(APIError):
            client.send_update(_weights(7))
    assert len(_posts(proxy.log)) == 1
    figures.set("retries", "attempts per request (default)", 1 + DEFAULT_RETRIES)


def test_a_refused_connection_is_retried_for_every_method(
    sleeps: list[float], figures: Figures
) -> None:
    # Nothing listens on the port: the request never left, so even a POST is retried.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    client = WebClient(1, uuid="00000000-0000-0000-0000-000000000001", url=url)
    with pytest.raises(ConnectError):
        client.check_for_new_model_aggregate()
    with pytest.raises(ConnectError):
        client.send_val_results({"loss": 1.0}, 1)
    # Per request: the first retry at once, then two jittered sleeps (1 + 3 attempts).
    assert len(sleeps) == 2 * 2
    figures.set("retries", "refused connections retried (GET and POST)", True)
