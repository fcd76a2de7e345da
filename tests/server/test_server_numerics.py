"""What an aggregate holds: float64 for plain JSON, exact integers, tensors matched by name."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import requests

from fma_connect import WebClient, default_codec_registry
from fma_connect.admin import AdminClient
from fma_connect.server.testing import RunningServer

MSGPACK = "application/vnd.fma-connect.msgpack"
PENDING, COMPLETE = 0, 2


def _latest(server: RunningServer, model_id: int, client: WebClient, accept: str) -> Any:
    response = requests.get(
        f"{server.url}/api/v1/models/{model_id}/get_latest_model/",
        headers={"CLIENT-UUID": client.uuid, "Accept": accept},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return response


def _latest_tensors(server: RunningServer, model_id: int, client: WebClient) -> dict[str, Any]:
    response = _latest(server, model_id, client, MSGPACK)
    assert response.headers["Content-Type"] == MSGPACK
    return dict(default_codec_registry().get("msgpack").decode(response.content))


def _model(admin: AdminClient, updates: int, aggregator: str = "avg_values_if_data") -> int:
    model = admin.create_model(
        "numerics",
        aggregator=aggregator,
        requirement="require_x_updates",
        requirement_args=[updates],
    )
    model_id: int = model["id"]
    return model_id


def test_plain_json_updates_average_to_float64_like_the_stock_service(
    server: RunningServer, admin: AdminClient
) -> None:
    model_id = _model(admin, 2)
    clients = [WebClient(model_id, url=server.url, retries=0) for _ in range(2)]
    clients[0].send_update([[1, 2]])
    clients[1].send_update([[2, 3]])
    body = _latest(server, model_id, clients[0], "application/json").json()
    assert body["values"] == [[1.5, 2.5]]
    (tensor,) = _latest_tensors(server, model_id, clients[0]).values()
    assert tensor.dtype == np.float64


def test_lossless_integer_updates_keep_their_dtype_and_round(
    server: RunningServer, admin: AdminClient
) -> None:
    model_id = _model(admin, 2)
    clients = [WebClient(model_id, url=server.url, codec="msgpack", retries=0) for _ in range(2)]
    clients[0].send_update({"n": np.array([1, 2, 3], np.int32)})
    clients[1].send_update({"n": np.array([2, 3, 6], np.int32)})
    result = _latest_tensors(server, model_id, clients[0])["n"]
    assert result.dtype == np.int32
    assert result.tolist() == [2, 2, 4]  # 1.5, 2.5, 4.5: to nearest, ties to even


@pytest.mark.parametrize("float_codec", ["msgpack", "json"])
def test_an_integer_and_a_float_update_average_to_floats_in_either_order(
    server: RunningServer, admin: AdminClient, float_codec: str
) -> None:
    integers = {"w": np.array([1, 2, 3], np.int8)}
    floats = {"w": np.array([1.5, 2.0, 3.0])}
    for order in ((integers, floats), (floats, integers)):
        model_id = _model(admin, 2)
        for update in order:
            codec = float_codec if update is floats else "msgpack"
            WebClient(model_id, url=server.url, codec=codec, retries=0).send_update(update)
        watcher = WebClient(model_id, url=server.url, retries=0)
        result = _latest_tensors(server, model_id, watcher)["w"]
        assert result.dtype == np.float64
        assert result.tolist() == [1.25, 2.0, 3.0]


@pytest.mark.filterwarnings("error::RuntimeWarning")  # no "invalid value encountered in cast"
@pytest.mark.parametrize(
    "values",
    [
        np.array([2**63 - 1, -(2**63), 0], np.int64),
        np.array([2**53 + 1, -(2**53) - 1], np.int64),
        np.array([2**64 - 1, 2**63, 1], np.uint64),
    ],
    ids=["int64-limits", "beyond-float64", "uint64-limits"],
)
def test_one_integer_update_comes_back_exactly(
    server: RunningServer, admin: AdminClient, values: np.ndarray
) -> None:
    model_id = _model(admin, 1)
    client = WebClient(model_id, url=server.url, codec="msgpack", retries=0)
    client.send_update({"n": values})
    result = _latest_tensors(server, model_id, client)["n"]
    assert result.dtype == values.dtype
    assert result.tolist() == values.tolist()


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_large_integers_average_exactly(server: RunningServer, admin: AdminClient) -> None:
    model_id = _model(admin, 2)
    clients = [WebClient(model_id, url=server.url, codec="msgpack", retries=0) for _ in range(2)]
    clients[0].send_update(
        {"i": np.array([2**63 - 1, -(2**63)], np.int64), "u": np.array([2**64 - 1, 3], np.uint64)}
    )
    second = np.array([2**63 - 3, -(2**63) + 2], np.int64)
    clients[1].send_update({"i": second, "u": np.array([2**64 - 2, 4], np.uint64)})
    result = _latest_tensors(server, model_id, clients[0])
    assert result["i"].tolist() == [2**63 - 2, -(2**63) + 1]
    # (2**64 - 1 + 2**64 - 2) / 2 = 2**64 - 1.5: ties go to the even neighbour.
    assert result["u"].tolist() == [2**64 - 2, 4]


def test_weighted_integer_mean_is_exact(server: RunningServer, admin: AdminClient) -> None:
    model_id = _model(admin, 2, aggregator="fed_avg")
    clients = [WebClient(model_id, url=server.url, codec="msgpack", retries=0) for _ in range(2)]
    big = 2**62 + 1
    clients[0].send_update({"n": np.array([10, big], np.int64)}, num_examples=1)
    clients[1].send_update({"n": np.array([20, big + 4], np.int64)}, num_examples=3)
    result = _latest_tensors(server, model_id, clients[0])["n"]
    # (10 + 60) / 4 = 17.5 -> 18; (big + 3 * (big + 4)) / 4 = big + 3 exactly.
    assert result.tolist() == [18, big + 3]


def test_named_tensors_are_matched_by_name(server: RunningServer, admin: AdminClient) -> None:
    model_id = _model(admin, 2)
    clients = [WebClient(model_id, url=server.url, codec="msgpack", retries=0) for _ in range(2)]
    first = clients[0].send_update(
        {"a": np.array([1.0, 2.0], np.float32), "b": np.array([1, 1, 1], np.int16)}
    )
    second = clients[1].send_update(
        {"b": np.array([3, 3, 3], np.int16), "a": np.array([3.0, 4.0], np.float32)}
    )
    assert first["status"] == PENDING
    assert second["status"] == COMPLETE  # the round ran in the second request
    result = _latest_tensors(server, model_id, clients[1])
    assert list(result) == ["a", "b"]  # the round's first update's order
    assert result["a"].tolist() == [2.0, 3.0]
    assert result["b"].tolist() == [2, 2, 2]
    updates = admin.list_updates(model_id)
    assert [u["status"] for u in updates] == [COMPLETE, COMPLETE]
