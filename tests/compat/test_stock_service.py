"""fma_connect's WebClient against the stock FMA Django service (fma-django 0.0.1).

These are the scenarios a user of the stock service runs: json updates that it
aggregates, an npz-b64 update that it stores and serves back verbatim, and a binary
codec that it refuses with a helpful error.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest
import requests
from stock_server import StockServer

from fma_connect import (
    APIException,
    ConfigurationError,
    TokenAuth,
    WebClient,
    default_codec_registry,
)
from fma_connect._transport import dumps_json


def create_model(stock: StockServer, **fields: Any) -> int:
    body = {
        "name": "compat",
        "developer": stock.admin_user_id,
        "aggregator": "avg_values_if_data",
        "requirement": "require_x_updates",
        "requirement_args": [2],
        **fields,
    }
    response = requests.post(
        f"{stock.url}/api/v1/models/", json=body, auth=TokenAuth(stock.admin_token), timeout=10
    )
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


def weights(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "dense": rng.standard_normal((4, 3)).astype(np.float32),
        "bias": rng.standard_normal((4, 3)).astype(np.float32),
    }


def test_json_updates_are_aggregated_and_restored_to_the_sent_dtypes(stock: StockServer) -> None:
    model = create_model(stock)
    clients = [WebClient(model, url=stock.url) for _ in range(2)]
    sent = [weights(1), weights(2)]
    for client, update in zip(clients, sent, strict=True):
        client.register()
        assert client.send_update(update)["federated_model"] == model
    assert stock.aggregate(model)["success"] is True

    # The service averages the float64 it parsed from the JSON text; the client casts back.
    parsed = [{k: np.asarray(orjson.loads(dumps_json(v))) for k, v in s.items()} for s in sent]
    expected = {
        name: np.average([p[name] for p in parsed], axis=0).astype(np.float32) for name in sent[0]
    }
    new = clients[0].check_for_new_model_aggregate()
    assert new is not None
    for name, array in expected.items():
        assert new["result"][name].dtype == np.float32
        np.testing.assert_array_equal(new["result"][name], array)
    assert clients[0].check_for_new_model_aggregate() is None  # nothing newer

    latest = clients[1].check_for_latest_model()
    assert latest is not None and latest["aggregate"] == new["id"]
    np.testing.assert_array_equal(latest["values"]["dense"], expected["dense"])

    score = clients[1].send_val_results({"accuracy": 0.9}, new["id"])
    assert score["aggregate"] == new["id"]
    with pytest.raises(APIException) as duplicate:
        clients[1].send_val_results({"accuracy": 0.9}, new["id"])
    assert duplicate.value.status_code == 400

    publish = requests.post(
        f"{stock.url}/api/v1/model_aggregates/{new['id']}/publish_aggregate/",
        json={"version": "1.0.0"},
        auth=TokenAuth(stock.admin_token),
        timeout=10,
    )
    assert publish.status_code == 201, publish.text
    artifact = clients[0].get_current_artifact()
    assert artifact is not None and artifact["version"] == "1.0.0"
    np.testing.assert_array_equal(artifact["values"]["bias"], expected["bias"])


def test_a_fresh_client_gets_what_the_service_sent(stock: StockServer) -> None:
    model = create_model(stock, initial_model=[[0.5, 0.25]])
    fresh = WebClient(model, url=stock.url)
    assert fresh.check_for_latest_model() == {
        "values": [[0.5, 0.25]],
        "aggregate": None,
    }


def test_npz_b64_updates_are_stored_and_served_back_bit_for_bit(stock: StockServer) -> None:
    # A separate model: the stock aggregators cannot average a tagged object.
    model = create_model(stock)
    client = WebClient(model, url=stock.url, codec="npz-b64")
    update: dict[str, np.ndarray] = {
        "w": np.array([np.nan, -0.0, 1e-45], np.float32),
        "n": np.arange(3, dtype=np.uint64),
    }
    stored = client.send_update(update)
    served = requests.get(stored["data"], timeout=10)
    assert served.status_code == 200
    decoded = dict(default_codec_registry().get("npz-b64").decode(served.json()))
    assert decoded["w"].tobytes() == update["w"].tobytes()
    assert decoded["n"].dtype == np.uint64


def test_a_binary_codec_is_refused_with_the_codecs_that_would_work(stock: StockServer) -> None:
    client = WebClient(create_model(stock), url=stock.url, codec="msgpack")
    with pytest.raises(APIException, match="status_code=415.*JSON-native codecs: json, npz-b64"):
        client.send_update(weights(3))


@pytest.mark.parametrize("codec", ["delta", "sparse"])
def test_a_delta_codec_is_refused_before_anything_is_sent(stock: StockServer, codec: str) -> None:
    model = create_model(stock)
    client = WebClient(model, url=stock.url, codec=codec)
    with pytest.raises(ConfigurationError, match="lists no codecs.*nothing was sent"):
        client.send_update(weights(3))
    response = requests.get(
        f"{stock.url}/api/v1/model_updates/", auth=TokenAuth(stock.admin_token), timeout=10
    )
    assert response.status_code == 200, response.text
    assert not [u for u in response.json() if u["federated_model"] == model]


def test_auth_failures_keep_the_seed_error_format(stock: StockServer) -> None:
    model = create_model(stock)
    unknown = WebClient(model, "00000000-0000-4000-8000-000000000000", stock.url)
    with pytest.raises(APIException, match=r"status_code=401\): \{'detail': 'Invalid UUID'\}"):
        unknown.check_for_latest_model()
    with pytest.raises(APIException, match="status_code=404"):
        WebClient(10_000, url=stock.url).register()


def test_equal_dicts_in_other_key_orders_are_averaged_tensor_by_tensor(stock: StockServer) -> None:
    """The stock service averages by position: equal trees must give the same layer order.

    One client holds its dict in init order, the other as ``jax.tree_util.tree_map`` and
    ``jax.jit`` hand it back (sorted keys); a template in either order restores it.
    """
    model = create_model(stock)
    clients = [WebClient(model, url=stock.url) for _ in range(2)]
    zeros, tens = np.zeros(3, np.float32), np.full(3, 10, np.float32)
    for client, update in zip(
        clients, [{"scale": zeros, "bias": tens}, {"bias": tens, "scale": zeros}], strict=True
    ):
        client.register()
        client.send_update(update)
    assert stock.aggregate(model)["success"] is True
    for client in clients:
        latest = client.check_for_latest_model()
        assert latest is not None
        assert latest["values"]["scale"].tolist() == [0, 0, 0]
        assert latest["values"]["bias"].tolist() == [10, 10, 10]
    fresh = WebClient(model, url=stock.url, uuid=clients[0].uuid)
    restored = fresh.check_for_latest_model(update_after=-2, like={"bias": zeros, "scale": zeros})
    assert restored is not None
    assert restored["values"]["bias"].tolist() == [10, 10, 10]
