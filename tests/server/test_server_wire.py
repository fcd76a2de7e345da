"""What travels on the wire: Accept negotiation, FMA-Meta, URLs, streamed large bodies."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest
import requests

from fma_connect import WebClient, default_codec_registry
from fma_connect.admin import AdminClient
from fma_connect.server.testing import RunningServer

MSGPACK = "application/vnd.fma-connect.msgpack"


@pytest.fixture
def aggregated(server: RunningServer, admin: AdminClient) -> tuple[dict[str, Any], WebClient]:
    """A model with one aggregate of two msgpack updates, and one of its clients."""
    model = admin.create_model("wire", requirement="require_x_updates", requirement_args=[2])
    clients = [WebClient(model["id"], url=server.url, codec="msgpack", retries=0) for _ in range(2)]
    clients[0].send_update({"w": np.array([1.0, 2.0], np.float32), "n": np.array([1, 2], np.int16)})
    clients[1].send_update({"w": np.array([3.0, 4.0], np.float32), "n": np.array([3, 4], np.int16)})
    aggregate = admin.list_aggregates(model["id"])[0]
    return aggregate, clients[0]


def _get(server: RunningServer, path: str, client: WebClient, accept: str) -> requests.Response:
    headers = {"CLIENT-UUID": client.uuid, "Accept": accept}
    return requests.get(server.url + path, headers=headers, timeout=10)


def test_binary_accept_gets_the_codec_body_and_meta_header(
    server: RunningServer, aggregated: tuple[dict[str, Any], WebClient]
) -> None:
    aggregate, client = aggregated
    path = f"/api/v1/models/{aggregate['federated_model']}/get_latest_model/"
    response = _get(server, path, client, f"{MSGPACK}, application/json;q=0.9")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == MSGPACK
    assert int(response.headers["Content-Length"]) == len(response.content)
    assert orjson.loads(response.headers["FMA-Meta"]) == {"aggregate": aggregate["id"]}
    tensors = dict(default_codec_registry().get("msgpack").decode(response.content))
    np.testing.assert_array_equal(tensors["w"], np.array([2.0, 3.0], np.float32))
    assert tensors["n"].dtype == np.int16
    np.testing.assert_array_equal(tensors["n"], [2, 3])


def test_json_accept_gets_plain_lists_and_tagged_json_when_named(
    server: RunningServer, aggregated: tuple[dict[str, Any], WebClient]
) -> None:
    aggregate, client = aggregated
    path = f"/api/v1/models/{aggregate['federated_model']}/get_latest_model/"
    body = _get(server, path, client, "application/json").json()
    assert body == {"aggregate": aggregate["id"], "values": [[2.0, 3.0], [2, 3]]}
    tagged = _get(server, path, client, "application/json; codec=npz-b64").json()
    assert tagged["aggregate"] == aggregate["id"]
    assert tagged["values"]["codec"] == "npz-b64"
    tensors = dict(default_codec_registry().get("npz-b64").decode(tagged["values"]))
    assert tensors["w"].dtype == np.float32
    # The aggregate detail has the result inline; get_latest_aggregate has a URL.
    detail = _get(server, f"/api/v1/model_aggregates/{aggregate['id']}/", client, "*/*").json()
    assert detail["result"] == body["values"]
    assert detail["parent"] is None
    latest = _get(server, path.replace("get_latest_model", "get_latest_aggregate"), client, "*/*")
    assert latest.json()["result"] == f"/api/v1/model_aggregates/{aggregate['id']}/result/"
    by_url = _get(server, latest.json()["result"], client, MSGPACK)
    assert by_url.headers["Content-Type"] == MSGPACK


def test_json_updates_give_plain_lists(server: RunningServer, admin: AdminClient) -> None:
    model = admin.create_model("lists", requirement="require_x_updates", requirement_args=[2])
    clients = [WebClient(model["id"], url=server.url, retries=0) for _ in range(2)]
    clients[0].send_update([[1.0, 2.0], [[1, 2], [3, 4]]])
    clients[1].send_update([[2.0, 4.0], [[3, 4], [5, 6]]])
    path = f"/api/v1/models/{model['id']}/get_latest_model/"
    body = _get(server, path, clients[0], "application/json").json()
    assert body["values"] == [[1.5, 3.0], [[2, 3], [4, 5]]]
    update = admin.list_updates(model["id"])[0]
    stored = _get(server, update["data"], clients[1], "application/json").json()
    assert stored == [[2.0, 4.0], [[3, 4], [5, 6]]]


def test_a_large_binary_update_round_trips(server: RunningServer, admin: AdminClient) -> None:
    model = admin.create_model("large", requirement="require_x_updates", requirement_args=[1])
    client = WebClient(model["id"], url=server.url, codec="msgpack", retries=0)
    big = {"w": np.random.default_rng(0).standard_normal(3_000_000).astype(np.float32)}
    client.send_update(big)
    latest = client.check_for_latest_model(update_after=0)
    assert latest is not None
    np.testing.assert_array_equal(latest["values"]["w"], big["w"])
