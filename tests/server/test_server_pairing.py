"""Tensors are averaged with the same tensor of every other update, never with another one.

Plain JSON layer lists carry no names; fma_connect clients send ``tensor_names`` next to
them and the reference server pairs tensors by those names, whatever the key order of
the senders' dicts (``OrderedDict``s keep their own order on the wire, so the server
is what pairs them). A sender's dict goes on the wire in sorted key order, so even a
positional service pairs equal trees right.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np
import pytest
import requests

from fma_connect import APIError, WebClient
from fma_connect.admin import AdminClient
from fma_connect.server.testing import RunningServer

ZEROS = np.zeros(3, np.float32)
TENS = np.full(3, 10, np.float32)


def _federation(server: RunningServer, admin: AdminClient, **options: Any) -> list[WebClient]:
    model = admin.create_model("pairs", aggregator="fed_avg", requirement="all_clients", **options)
    clients = [WebClient(model["id"], url=server.url, retries=0) for _ in range(2)]
    for client in clients:
        client.register()
    return clients


@pytest.mark.parametrize("mapping", [dict, OrderedDict], ids=["dict", "OrderedDict"])
def test_json_updates_in_other_key_orders_are_paired_by_name(
    server: RunningServer, admin: AdminClient, mapping: type[dict[str, Any]]
) -> None:
    first, second = _federation(server, admin)
    first.send_update(mapping([("enc", ZEROS), ("dec", TENS)]))
    second.send_update(mapping([("dec", TENS), ("enc", ZEROS)]))
    for client in (first, second):
        latest = client.check_for_latest_model()
        assert latest is not None
        assert latest["values"]["enc"].tolist() == [0, 0, 0]
        assert latest["values"]["dec"].tolist() == [10, 10, 10]


def test_the_server_pairs_named_plain_lists_by_name(
    server: RunningServer, admin: AdminClient
) -> None:
    """Raw requests: the same layers in two orders, each with its names."""
    first, second = _federation(server, admin)
    url = f"{server.url}/api/v1/model_updates/"
    for client, names, layers in (
        (first, ["enc", "dec"], [ZEROS.tolist(), TENS.tolist()]),
        (second, ["dec", "enc"], [TENS.tolist(), ZEROS.tolist()]),
    ):
        body = {"federated_model": first.federated_model_id, "data": layers, "tensor_names": names}
        response = requests.post(url, json=body, headers={"CLIENT-UUID": client.uuid}, timeout=10)
        assert response.status_code == 201, response.text
    latest = WebClient(first.federated_model_id, url=server.url, uuid=first.uuid)
    values = latest.check_for_latest_model(like={"enc": ZEROS, "dec": ZEROS})
    assert values is not None
    assert values["values"]["enc"].tolist() == [0, 0, 0]
    assert values["values"]["dec"].tolist() == [10, 10, 10]
    # A client that sent nothing yet gets the plain lists, in the aggregate's order.
    plain = requests.get(
        f"{server.url}/api/v1/models/{first.federated_model_id}/get_latest_model/",
        headers={"CLIENT-UUID": first.uuid},
        timeout=10,
    ).json()
    assert plain["values"] == [ZEROS.tolist(), TENS.tolist()]


@pytest.mark.parametrize(
    ("names", "problem"),
    [
        (["a"], "2 names"),  # one name for two layers... the count is named
        (["a", "a"], "twice"),
        (["a", 3], "non-empty strings"),
        ("ab", "non-empty strings"),
        (["a", ""], "non-empty strings"),
    ],
)
def test_malformed_tensor_names_are_refused(
    server: RunningServer, admin: AdminClient, names: Any, problem: str
) -> None:
    first, _ = _federation(server, admin)
    body = {"federated_model": first.federated_model_id, "data": [[1.0], [2.0]]}
    response = requests.post(
        f"{server.url}/api/v1/model_updates/",
        json={**body, "tensor_names": names},
        headers={"CLIENT-UUID": first.uuid},
        timeout=10,
    )
    assert response.status_code == 400, response.text
    (reason,) = response.json()["tensor_names"]
    assert problem in reason or "1 names" in reason


def test_names_of_the_initial_model_hold_updates_to_them(
    server: RunningServer, admin: AdminClient
) -> None:
    first, second = _federation(server, admin, initial_model={"enc": ZEROS, "dec": ZEROS})
    with pytest.raises(APIError) as refused:  # another name: not the same tensor
        first.send_update({"enc": ZEROS, "head": TENS})
    assert refused.value.status_code == 400
    assert "'head'" in str(refused.value)
    first.send_update(OrderedDict([("enc", ZEROS), ("dec", TENS)]))
    second.send_update(OrderedDict([("dec", TENS), ("enc", ZEROS)]))
    latest = second.check_for_latest_model()
    assert latest is not None
    assert latest["values"]["dec"].tolist() == [10, 10, 10]


def test_without_an_initial_model_the_first_round_takes_the_majority_structure(
    server: RunningServer, admin: AdminClient
) -> None:
    """One client's bogus first update cannot define the model and lock the others out."""
    model = admin.create_model("majority", requirement="require_x_updates", requirement_args=[3])
    bogus, *honest = [WebClient(model["id"], url=server.url, codec="msgpack") for _ in range(4)]
    bogus.send_update({"w": np.zeros(7)})  # arrives first, with another shape
    for client in honest:
        client.send_update({"w": np.ones(2)})
    (aggregate,) = admin.list_aggregates(model["id"])
    statuses = {u["client"]: u for u in admin.list_updates(model["id"])}
    assert statuses[bogus.uuid]["status"] == 4  # INVALID, saying why
    assert "shape" in statuses[bogus.uuid]["status_reason"]
    assert all(statuses[c.uuid]["status"] == 2 for c in honest)
    latest = honest[0].check_for_latest_model()
    assert latest is not None and latest["values"]["w"].tolist() == [1.0, 1.0]
    # From now on the aggregate is the model's structure, checked on arrival.
    with pytest.raises(APIError) as refused:
        bogus.send_update({"w": np.zeros(7)})
    assert refused.value.status_code == 400
    assert f"latest aggregate ({aggregate['id']})" in str(refused.value)


def test_a_first_round_without_a_majority_structure_waits(
    server: RunningServer, admin: AdminClient
) -> None:
    model = admin.create_model("tie", requirement="require_x_updates", requirement_args=[2])
    one, other, third = [WebClient(model["id"], url=server.url, codec="msgpack") for _ in range(3)]
    one.send_update({"w": np.zeros(7)})
    other.send_update({"w": np.ones(2)})
    assert admin.list_aggregates(model["id"]) == []
    assert {u["status"] for u in admin.list_updates(model["id"])} == {0}  # all PENDING
    with pytest.raises(APIError) as tie:
        admin.aggregate(model["id"])
    assert tie.value.status_code == 400 and "no majority structure" in str(tie.value)
    third.send_update({"w": np.full(2, 4.0)})  # the tie is broken: 2 clients against 1
    latest = third.check_for_latest_model()
    assert latest is not None and latest["values"]["w"].tolist() == [2.5, 2.5]


def test_unnamed_layers_are_refused_where_position_cannot_tell_named_tensors_apart(
    server: RunningServer, admin: AdminClient
) -> None:
    """A plain list (the original client's form) against ``enc``/``dec`` of one shape."""
    first, _ = _federation(server, admin, initial_model={"enc": ZEROS, "dec": ZEROS})
    body = {"federated_model": first.federated_model_id, "data": [TENS.tolist(), ZEROS.tolist()]}
    response = requests.post(
        f"{server.url}/api/v1/model_updates/",
        json=body,
        headers={"CLIENT-UUID": first.uuid},
        timeout=10,
    )
    assert response.status_code == 400, response.text
    (reason,) = response.json()["data"]
    assert "cannot tell apart" in reason and "tensor_names" in reason
    # A list is still fine where the shapes tell the tensors apart.
    model = admin.create_model("shapes", initial_model={"w": np.zeros((2, 2)), "b": ZEROS})
    plain = WebClient(model["id"], url=server.url, retries=0)
    assert plain.send_update([ZEROS, np.ones((2, 2))])["status"] in (0, 2)  # b, w: sorted
