"""``Accept: application/json`` gets plain lists; a tagged codec only when asked for by name."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import requests

from fma_connect import WebClient, default_codec_registry
from fma_connect.admin import AdminClient
from fma_connect.server.testing import RunningServer

TAGGED = "application/json; codec=npz-b64"


@pytest.fixture
def mixed(server: RunningServer, admin: AdminClient) -> tuple[dict[str, Any], WebClient]:
    """A model whose aggregate mixes a json, an npz-b64 and a msgpack update."""
    model = admin.create_model("mixed", requirement="require_x_updates", requirement_args=[3])
    clients = [
        WebClient(model["id"], url=server.url, codec=codec, retries=0)
        for codec in ("json", "npz-b64", "msgpack")
    ]
    for i, client in enumerate(clients):
        client.send_update([np.full((2, 2), float(i), np.float32), np.array([i, 2 * i], np.int16)])
    (aggregate,) = admin.list_aggregates(model["id"])
    return aggregate, clients[0]


def _get(server: RunningServer, path: str, client: WebClient, accept: str | None) -> Any:
    headers = {"CLIENT-UUID": client.uuid}
    if accept is not None:
        headers["Accept"] = accept
    response = requests.get(server.url + path, headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    return response.json()


@pytest.mark.parametrize("accept", ["application/json", "*/*", None, "application/json; q=0.5"])
def test_plain_json_requests_get_plain_lists(
    server: RunningServer, mixed: tuple[dict[str, Any], WebClient], accept: str | None
) -> None:
    aggregate, client = mixed
    path = f"/api/v1/models/{aggregate['federated_model']}/get_latest_model/"
    latest = _get(server, path, client, accept)
    assert latest == {"values": [[[1.0, 1.0], [1.0, 1.0]], [1, 2]], "aggregate": aggregate["id"]}
    detail = _get(server, f"/api/v1/model_aggregates/{aggregate['id']}/", client, accept)
    assert detail["result"] == latest["values"]
    result = f"/api/v1/model_aggregates/{aggregate['id']}/result/"
    assert _get(server, result, client, accept) == latest["values"]


def test_a_tagged_codec_is_sent_when_named_in_accept(
    server: RunningServer, mixed: tuple[dict[str, Any], WebClient]
) -> None:
    aggregate, client = mixed
    path = f"/api/v1/models/{aggregate['federated_model']}/get_latest_model/"
    latest = _get(server, path, client, TAGGED)
    assert latest["values"]["codec"] == "npz-b64"
    tensors = default_codec_registry().get("npz-b64").decode(latest["values"])
    assert [array.dtype for _, array in tensors] == [np.float32, np.int16]
    np.testing.assert_array_equal(tensors[0][1], np.ones((2, 2), np.float32))
    # The parameter may be quoted, and other ranges may follow with a lower quality.
    quoted = _get(server, path, client, 'application/json;codec="npz-b64", */*;q=0.1')
    assert quoted["values"]["codec"] == "npz-b64"
    assert isinstance(_get(server, path, client, "application/json; codec=json")["values"], list)


def test_stored_tagged_updates_are_plain_lists_for_plain_json(
    server: RunningServer, admin: AdminClient
) -> None:
    model = admin.create_model("stored", allow_aggregation=False)
    client = WebClient(model["id"], url=server.url, codec="npz-b64", retries=0)
    sent = client.send_update([np.array([1.5, 2.5], np.float32)])
    assert _get(server, sent["data"], client, "application/json") == [[1.5, 2.5]]
    tagged = _get(server, sent["data"], client, TAGGED)
    assert tagged["codec"] == "npz-b64"
