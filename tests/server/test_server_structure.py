"""An update's structure is checked when it arrives; rounds count valid updates only."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import requests

from fma_connect import APIError, WebClient, default_codec_registry
from fma_connect.admin import AdminClient
from fma_connect.server.testing import RunningServer

PENDING, COMPLETE, INVALID = 0, 2, 4
MSGPACK = "application/vnd.fma-connect.msgpack"


def _refused(client: WebClient, weights: Any) -> str:
    with pytest.raises(APIError) as refused:
        client.send_update(weights)
    assert refused.value.status_code == 400
    detail = refused.value.detail
    assert isinstance(detail, dict)
    (reason,) = detail["data"]
    assert isinstance(reason, str)
    return reason


def test_updates_must_fit_the_initial_model(server: RunningServer, admin: AdminClient) -> None:
    initial = [np.zeros((2, 2)), np.ones(3)]
    model = admin.create_model("initial", initial_model=initial, allow_aggregation=False)
    client = WebClient(model["id"], url=server.url, retries=0)
    assert "expected 2 tensors" in _refused(client, [np.zeros((2, 2)), np.ones(3), np.ones(1)])
    reason = _refused(client, [np.zeros((2, 2)), np.ones(4)])
    assert "tensor 1" in reason
    assert "[4]" in reason
    assert "[3]" in reason
    assert client.send_update([np.ones((2, 2)), np.zeros(3)])["status"] == PENDING
    assert len(admin.list_updates(model["id"])) == 1


def test_without_an_initial_model_pending_updates_are_not_refused_against_each_other(
    server: RunningServer, admin: AdminClient
) -> None:
    """No single client's first update defines the model: its first round's majority does."""
    model = admin.create_model("first", allow_aggregation=False)
    named = WebClient(model["id"], url=server.url, codec="msgpack", retries=0)
    named.send_update({"w": np.zeros(4, np.float32), "b": np.zeros(2, np.float32)})
    assert named.send_update({"w": np.zeros(5, np.float32), "b": np.zeros(2)})["status"] == PENDING
    # Still refused on arrival: what no model can hold.
    assert "no tensors" in _refused(named, {})
    assert len(admin.list_updates(model["id"])) == 2


def test_named_updates_must_fit_the_initial_model_by_name(
    server: RunningServer, admin: AdminClient
) -> None:
    initial = {"w": np.zeros(4, np.float32), "b": np.zeros(2, np.float32)}
    model = admin.create_model("named", allow_aggregation=False, initial_model=initial)
    named = WebClient(model["id"], url=server.url, codec="msgpack", retries=0)
    assert "shape" in _refused(named, {"w": np.zeros(5, np.float32), "b": np.zeros(2)})
    assert "'c'" in _refused(named, {"w": np.zeros(4, np.float32), "c": np.zeros(2)})
    # Plain JSON from a client without names (the original client) is compared by position.
    layers = [np.ones(2).tolist(), np.ones(4).tolist()]  # the initial model's order: b, w
    plain = WebClient(model["id"], url=server.url, retries=0)
    assert plain.send_update(layers)["status"] == PENDING
    assert "expected 2 tensors" in _refused(plain, [np.ones(4)])
    assert len(admin.list_updates(model["id"])) == 1


def test_an_aggregate_sets_the_structure(server: RunningServer, admin: AdminClient) -> None:
    model = admin.create_model("after", requirement="require_x_updates", requirement_args=[1])
    client = WebClient(model["id"], url=server.url, codec="msgpack", retries=0)
    client.send_update({"w": np.zeros(3)})
    assert "shape" in _refused(client, {"w": np.zeros(2)})


def test_empty_updates_are_refused(server: RunningServer, admin: AdminClient) -> None:
    model = admin.create_model("empty")
    client = WebClient(model["id"], url=server.url, retries=0)
    client.register()
    headers = {"CLIENT-UUID": client.uuid}
    body = {"federated_model": model["id"], "data": []}
    response = requests.post(
        f"{server.url}/api/v1/model_updates/", json=body, headers=headers, timeout=10
    )
    assert response.status_code == 400, response.text
    assert "no tensors" in response.json()["data"][0]
    empty = b"".join(bytes(part) for part in default_codec_registry().get("msgpack").encode([]))
    binary = requests.post(
        f"{server.url}/api/v1/model_updates/?federated_model={model['id']}",
        data=empty,
        headers={**headers, "Content-Type": MSGPACK},
        timeout=10,
    )
    assert binary.status_code == 400, binary.text
    assert admin.list_updates(model["id"]) == []


def test_requirements_count_valid_updates_only(server: RunningServer, admin: AdminClient) -> None:
    model = admin.create_model(
        "valid", requirement="require_x_updates", requirement_args=[2], furthest_base_agg=1
    )
    clients = [WebClient(model["id"], url=server.url, codec="msgpack", retries=0) for _ in range(3)]
    for client in clients[:2]:
        client.send_update({"w": np.zeros(2)})
    (start,) = admin.list_aggregates(model["id"])
    stale = clients[0].send_update({"w": np.array([9.0, 9.0])}, base_aggregate=None)
    assert stale["status"] == PENDING
    held = clients[1].send_update({"w": np.array([1.0, 2.0])}, base_aggregate=start["id"])
    # The stale update is refused in the round, which then lacks a second valid update.
    assert held["status"] == PENDING
    assert len(admin.list_aggregates(model["id"])) == 1
    statuses = {u["id"]: u for u in admin.list_updates(model["id"])}
    assert statuses[stale["id"]]["status"] == INVALID
    assert "furthest_base_agg" in statuses[stale["id"]]["status_reason"]
    assert statuses[held["id"]]["status"] == PENDING

    last = clients[2].send_update({"w": np.array([3.0, 4.0])}, base_aggregate=start["id"])
    assert last["status"] == COMPLETE  # the round ran in this request, and it says so
    aggregate = max(admin.list_aggregates(model["id"]), key=lambda a: a["id"])
    assert last["applied_aggregate"] == aggregate["id"]
    latest = clients[2].check_for_latest_model()
    assert latest is not None
    np.testing.assert_array_equal(latest["values"]["w"], [2.0, 3.0])


def test_an_update_made_invalid_by_its_own_round_says_so(
    server: RunningServer, admin: AdminClient
) -> None:
    model = admin.create_model("own-round", furthest_base_agg=1)
    client = WebClient(model["id"], url=server.url, codec="msgpack", retries=0)
    assert client.send_update({"w": np.array([1.0])})["status"] == COMPLETE
    sent = client.send_update({"w": np.array([2.0])}, base_aggregate=None)
    assert sent["status"] == INVALID
    assert "furthest_base_agg" in sent["status_reason"]


def test_updates_holding_nan_or_infinity_are_refused_on_arrival(
    server: RunningServer, admin: AdminClient
) -> None:
    model = admin.create_model("finite")
    for codec in ("msgpack", "npz-b64"):
        client = WebClient(model["id"], url=server.url, codec=codec, retries=0)
        for bad in (np.nan, np.inf, -np.inf):
            with pytest.raises(APIError) as refused:
                client.send_update({"w": np.array([1.0, bad], np.float32)})
            assert refused.value.status_code == 400
            assert "'w' holds NaN or infinite values" in str(refused.value.detail)
    assert admin.list_updates(model["id"]) == []
    npz = default_codec_registry().get("npz-b64")
    initial = npz.encode([("w", np.array([np.nan]))])
    response = requests.post(
        f"{server.url}/api/v1/models/",
        json={"name": "finite-initial", "developer": 1, "initial_model": initial},
        headers={"Authorization": f"Token {server.admin_token}"},
        timeout=10,
    )
    assert response.status_code == 400, response.text
    assert "NaN or infinite" in response.json()["initial_model"][0]
