"""Full federated rounds against the real server over HTTP, with every built-in codec."""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
from server_helpers import CODECS, assert_leaves_equal, make_tree, reference_mean

from fma_connect import APIError, WebClient, default_codec_registry
from fma_connect.admin import AdminClient
from fma_connect.codecs.msgpack_numpy import MsgpackCodec
from fma_connect.server.testing import RunningServer, running_server

PENDING, COMPLETE = 0, 2


def _clients(server: RunningServer, model_id: int, codecs: list[str]) -> list[WebClient]:
    clients = [WebClient(model_id, url=server.url, codec=c, retries=0) for c in codecs]
    for client in clients:
        client.register()
    return clients


@pytest.mark.parametrize("codec", CODECS)
def test_fed_avg_rounds_publish_and_scores(
    server: RunningServer, admin: AdminClient, codec: str
) -> None:
    model = admin.create_model(
        "fedavg", aggregator="fed_avg", requirement="require_x_updates", requirement_args=[3]
    )
    clients = _clients(server, model["id"], [codec] * 3)
    trees = [make_tree(seed) for seed in range(3)]
    examples = [10, 30, 60]

    for client, tree, n in zip(clients, trees, examples, strict=True):
        assert clients[0].check_for_new_model_aggregate() is None  # not 3 updates yet
        sent = client.send_update(tree, num_examples=n)
        assert sent["data"].startswith("/api/v1/")
        assert sent["client"] == client.uuid
    first = clients[0].check_for_new_model_aggregate()
    assert first is not None
    assert first["parent"] is None
    expected = reference_mean(trees, examples, [codec] * 3)
    assert_leaves_equal(first["result"], expected)
    assert clients[0].check_for_new_model_aggregate() is None  # nothing newer now
    assert clients[0].check_for_latest_model() is None  # client 0 has seen it already
    for client in clients:
        latest = client.check_for_latest_model(update_after=0)
        assert latest is not None
        assert latest["aggregate"] == first["id"]
        assert_leaves_equal(latest["values"], expected)

    # Round 2 averages only the updates sent since round 1.
    trees2 = [make_tree(seed) for seed in range(10, 13)]
    examples2 = [5, 5, 90]
    for client, tree, n in zip(clients, trees2, examples2, strict=True):
        client.send_update(tree, base_aggregate=first["id"], num_examples=n)
    second = clients[1].check_for_new_model_aggregate()
    assert second is not None
    assert second["parent"] == first["id"]
    expected2 = reference_mean(trees2, examples2, [codec] * 3)
    assert_leaves_equal(second["result"], expected2)

    score = clients[0].send_val_results({"accuracy": 0.75}, second["id"])
    assert score["aggregate"] == second["id"]
    assert score["client"] == clients[0].uuid
    assert score["validation_results"] == {"accuracy": 0.75}
    with pytest.raises(APIError) as duplicate:
        clients[0].send_val_results({"accuracy": 0.8}, second["id"])
    assert duplicate.value.status_code == 400
    other = WebClient(admin.create_model("other")["id"], url=server.url, retries=0)
    with pytest.raises(APIError) as elsewhere:
        other.send_val_results({"accuracy": 0.8}, second["id"])
    assert elsewhere.value.status_code == 403
    assert f"Aggregate {second['id']} belongs to federated model {model['id']}" in str(
        elsewhere.value.detail
    )

    assert clients[2].get_current_artifact() is None
    artifact = admin.publish(second["id"], "1.0.0")
    assert artifact["version"] == "1.0.0"
    current = clients[2].get_current_artifact()
    assert current is not None
    assert current["id"] == artifact["id"]
    assert current["version"] == "1.0.0"
    assert_leaves_equal(current["values"], expected2)

    updates = admin.list_updates(model["id"])
    assert [u["id"] for u in updates] == sorted((u["id"] for u in updates), reverse=True)
    assert [u["status"] for u in updates] == [COMPLETE] * 6
    assert {u["codec"] for u in updates} == {codec}
    aggregates = admin.list_aggregates(model["id"])
    assert [a["id"] for a in aggregates] == [second["id"], first["id"]]


def test_all_clients_requirement_and_admin_trigger(
    server: RunningServer, admin: AdminClient
) -> None:
    model = admin.create_model("all", requirement="all_clients")
    clients = _clients(server, model["id"], ["json"] * 3)
    layers = [[np.full((2, 2), float(i)), np.arange(3.0) * i] for i in range(1, 4)]

    clients[0].send_update(layers[0])
    clients[1].send_update(layers[1])
    assert clients[2].check_for_new_model_aggregate() is None  # client 3 has not sent
    triggered = admin.aggregate(model["id"])
    seen = clients[2].check_for_new_model_aggregate(like=layers[0])
    assert seen is not None
    assert seen["id"] == triggered["id"]
    assert_leaves_equal(seen["result"], reference_mean(layers[:2], codecs=["json"] * 2))
    with pytest.raises(APIError) as nothing:
        admin.aggregate(model["id"])
    assert nothing.value.status_code == 400
    assert "No pending updates" in str(nothing.value.detail)

    for client, weights in zip(clients, layers, strict=True):
        client.send_update(weights)
    automatic = clients[0].check_for_new_model_aggregate()
    assert automatic is not None
    assert automatic["parent"] == triggered["id"]
    assert_leaves_equal(automatic["result"], reference_mean(layers, codecs=["json"] * 3))


def test_mixed_codecs_in_one_round_keep_each_clients_dtypes(
    server: RunningServer, admin: AdminClient
) -> None:
    model = admin.create_model("mixed", requirement="require_x_updates", requirement_args=[3])
    clients = _clients(server, model["id"], list(CODECS))
    trees = [make_tree(seed) for seed in range(20, 23)]
    for client, tree in zip(clients, trees, strict=True):
        client.send_update(tree)
    expected = reference_mean(trees, codecs=CODECS)
    for client in clients:
        latest = client.check_for_latest_model()
        assert latest is not None
        assert_leaves_equal(latest["values"], expected)


def test_average_layers_takes_layers_of_different_shapes(
    server: RunningServer, admin: AdminClient
) -> None:
    model = admin.create_model(
        "layers", aggregator="average_layers", requirement="require_x_updates", requirement_args=[2]
    )
    clients = _clients(server, model["id"], ["json", "json"])
    updates = [
        [np.arange(6, dtype=np.int64).reshape(2, 3), np.array([1.5, 2.5]), np.array([1, 2, 4])],
        [np.ones((2, 3), np.int64), np.array([0.5, -2.5]), np.array([2, 3, 5])],
    ]
    for client, layers in zip(clients, updates, strict=True):
        client.send_update(layers)
    aggregate = clients[0].check_for_new_model_aggregate()
    assert aggregate is not None
    # Integers are rounded to nearest (ties to even) and stay integers.
    assert_leaves_equal(aggregate["result"], reference_mean(updates, codecs=["json"] * 2))
    assert aggregate["result"][2].tolist() == [2, 2, 4]


def test_initial_model_is_the_latest_model_until_a_round(
    server: RunningServer, admin: AdminClient
) -> None:
    initial = [np.zeros((2, 2), np.float32), np.ones(3, np.float32)]
    model = admin.create_model("init", initial_model=initial)
    assert model["current_artifact"] is not None
    (client,) = _clients(server, model["id"], ["msgpack"])
    latest = client.check_for_latest_model(like=initial)
    assert latest is not None
    assert latest["aggregate"] is None
    assert_leaves_equal(latest["values"], initial)
    artifact = client.get_current_artifact(like=initial)
    assert artifact is not None
    assert artifact["version"] == "0.0.0"
    assert_leaves_equal(artifact["values"], initial)


@pytest.mark.parametrize("codec", ["msgpack", "npz-b64"])
def test_fresh_client_gets_dtypes_from_a_lossless_aggregate(
    server: RunningServer, admin: AdminClient, codec: str
) -> None:
    model = admin.create_model("fresh", requirement="require_x_updates", requirement_args=[1])
    (sender,) = _clients(server, model["id"], [codec])
    tree = make_tree(7)
    sender.send_update(tree)
    (fresh,) = _clients(server, model["id"], ["msgpack"])  # no Spec: nothing sent yet
    latest = fresh.check_for_latest_model()
    assert latest is not None
    values = latest["values"]
    assert values["dense.kernel"].dtype == np.float32
    assert values["count"].dtype == np.int32
    np.testing.assert_array_equal(values["dense.bias"], tree["dense"]["bias"])
    # JSON keeps the dtypes only in a tagged codec, asked for by name in Accept.
    response = requests.get(
        f"{server.url}/api/v1/models/{model['id']}/get_latest_model/",
        headers={"CLIENT-UUID": fresh.uuid, "Accept": "application/json; codec=npz-b64"},
        timeout=10,
    )
    tagged = dict(default_codec_registry().get("npz-b64").decode(response.json()["values"]))
    assert tagged["dense.kernel"].dtype == np.float32
    assert tagged["count"].dtype == np.int32


def test_concurrent_updates_never_share_or_split_a_round(
    server: RunningServer, admin: AdminClient
) -> None:
    model = admin.create_model("race", requirement="require_x_updates", requirement_args=[3])
    clients = _clients(server, model["id"], ["msgpack"] * 8)
    values = {client.uuid: float(i) for i, client in enumerate(clients)}
    with ThreadPoolExecutor(8) as pool:
        futures = [
            pool.submit(client.send_update, [np.full(1000, values[client.uuid], np.float32)])
            for client in clients
        ]
        for future in futures:
            future.result()
    updates = admin.list_updates(model["id"])
    rounds = Counter(u["applied_aggregate"] for u in updates if u["status"] == COMPLETE)
    pending = [u for u in updates if u["status"] == PENDING]
    assert len(pending) + sum(rounds.values()) == 8
    assert len(pending) < 3  # otherwise a round would have run
    assert all(count >= 3 for count in rounds.values())
    assert sorted(rounds) == sorted(a["id"] for a in admin.list_aggregates(model["id"]))
    for aggregate_id in rounds:  # each aggregate is the mean of exactly its own updates
        mine = [values[u["client"]] for u in updates if u["applied_aggregate"] == aggregate_id]
        response = requests.get(
            f"{server.url}/api/v1/model_aggregates/{aggregate_id}/result/",
            headers={"CLIENT-UUID": clients[0].uuid, "Accept": clients[0].codec.media_type},
            timeout=10,
        )
        ((_, result),) = MsgpackCodec().decode(response.content)
        np.testing.assert_allclose(result, np.mean(mine), rtol=1e-6)


def test_background_aggregation(tmp_path: Path) -> None:
    with running_server(tmp_path / "data", auto_aggregate="background") as (url, token):
        admin = AdminClient(url, token, retries=0)
        model = admin.create_model("bg", requirement="require_x_updates", requirement_args=[2])
        clients = [WebClient(model["id"], url=url, retries=0) for _ in range(2)]
        clients[0].send_update([np.array([1.0])])
        clients[1].send_update([np.array([2.0])])
        deadline = time.monotonic() + 10
        aggregate = None
        while aggregate is None and time.monotonic() < deadline:
            aggregate = clients[0].check_for_new_model_aggregate()
            time.sleep(0.02)
        assert aggregate is not None
        assert aggregate["result"][0].tolist() == [1.5]
