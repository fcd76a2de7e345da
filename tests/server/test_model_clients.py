"""A model's clients: listing them with their updates, removing one (reference server)."""

from __future__ import annotations

import uuid as uuid_module

import numpy as np
import pytest
import requests

from fma_connect import APIError, UpdateStatus, WebClient
from fma_connect.admin import AdminClient
from fma_connect.server.testing import RunningServer

NONE = {status.name: 0 for status in UpdateStatus}


def _clients(server: RunningServer, model_id: int, n: int) -> list[WebClient]:
    clients = [WebClient(model_id, url=server.url, retries=0) for _ in range(n)]
    for client in clients:
        client.register()
    return clients


def _statuses(admin: AdminClient, model_id: int) -> dict[str, list[UpdateStatus]]:
    """Client UUID -> the statuses of its updates, oldest first."""
    found: dict[str, list[UpdateStatus]] = {}
    for row in reversed(admin.list_updates(model_id)):
        found.setdefault(row["client"], []).append(row["status"])
    return found


def test_clients_are_listed_with_their_updates_and_statuses(
    server: RunningServer, admin: AdminClient
) -> None:
    model = admin.create_model(
        "listed", requirement="require_x_updates", requirement_args=[2], initial_model=[np.ones(2)]
    )
    a, b, idle = _clients(server, model["id"], 3)
    a.send_update([np.ones(2)])
    b.send_update([np.ones(2)])  # the second update: a round averages both
    newest = a.send_update([np.ones(2)])  # waits for one more

    listed = admin.list_clients(model["id"])
    assert [row["uuid"] for row in listed] == [a.uuid, b.uuid, idle.uuid]  # registration order
    created = {row["id"]: row["created_on"] for row in admin.list_updates(model["id"])}
    first, second, third = listed
    assert first["updates"] == 2
    assert first["last_seen"] == created[newest["id"]]
    assert first["statuses"] == {**NONE, "PENDING": 1, "COMPLETE": 1}
    assert second["updates"] == 1
    assert second["statuses"] == {**NONE, "COMPLETE": 1}
    assert third == {
        "uuid": idle.uuid,
        "registered_on": third["registered_on"],
        "last_seen": None,
        "updates": 0,
        "statuses": NONE,
    }
    assert all(isinstance(row["registered_on"], str) for row in listed)


def test_updates_to_another_model_are_not_counted(
    server: RunningServer, admin: AdminClient
) -> None:
    one = admin.create_model("one", initial_model=[np.ones(2)])
    two = admin.create_model("two", initial_model=[np.ones(2)])
    (client,) = _clients(server, one["id"], 1)
    client.send_update([np.ones(2)])
    WebClient(two["id"], url=server.url, uuid=client.uuid, retries=0).register()
    (row,) = admin.list_clients(two["id"])
    assert (row["uuid"], row["updates"], row["last_seen"]) == (client.uuid, 0, None)
    assert admin.list_clients(one["id"])[0]["updates"] == 1


def test_removing_the_client_an_all_clients_model_waits_for_runs_its_round(
    server: RunningServer, admin: AdminClient
) -> None:
    model = admin.create_model("all", requirement="all_clients", initial_model=[np.ones(2)])
    a, b, silent = _clients(server, model["id"], 3)
    a.send_update([np.full(2, 2.0)])
    b.send_update([np.full(2, 4.0)])
    assert admin.list_aggregates(model["id"]) == []  # waiting for the silent one

    admin.remove_client(model["id"], silent.uuid)

    (aggregate,) = admin.list_aggregates(model["id"])  # the automatic round ran at once
    latest = a.check_for_latest_model(update_after=-1)
    assert latest is not None and latest["aggregate"] == aggregate["id"]
    np.testing.assert_allclose(np.asarray(latest["values"][0]), [3.0, 3.0])
    assert _statuses(admin, model["id"]) == {
        a.uuid: [UpdateStatus.COMPLETE],
        b.uuid: [UpdateStatus.COMPLETE],
    }
    assert [row["uuid"] for row in admin.list_clients(model["id"])] == [a.uuid, b.uuid]
    assert silent.uuid not in admin.get_model(model["id"])["clients"]


def test_a_removed_clients_pending_update_stays_but_no_longer_counts(
    server: RunningServer, admin: AdminClient
) -> None:
    model = admin.create_model("all", requirement="all_clients", initial_model=[np.ones(2)])
    gone, staying = _clients(server, model["id"], 2)
    gone.send_update([np.full(2, 9.0)])
    admin.remove_client(model["id"], gone.uuid)
    assert admin.list_aggregates(model["id"]) == []  # the remaining client has not sent
    assert _statuses(admin, model["id"]) == {gone.uuid: [UpdateStatus.PENDING]}

    staying.send_update([np.full(2, 5.0)])  # every remaining client has sent: a round

    (aggregate,) = admin.list_aggregates(model["id"])
    latest = staying.check_for_latest_model(update_after=-1)
    assert latest is not None and latest["aggregate"] == aggregate["id"]
    np.testing.assert_allclose(np.asarray(latest["values"][0]), [5.0, 5.0])  # without 9s
    rows = {row["client"]: row for row in admin.list_updates(model["id"])}
    assert rows[gone.uuid]["status"] == UpdateStatus.INVALID
    assert "no longer registered" in rows[gone.uuid]["status_reason"]
    assert rows[staying.uuid]["status"] == UpdateStatus.COMPLETE


def test_a_removed_client_is_refused_until_it_registers_again(
    server: RunningServer, admin: AdminClient
) -> None:
    model = admin.create_model("refused", initial_model=[np.ones(2)])
    (client,) = _clients(server, model["id"], 1)
    admin.remove_client(model["id"], client.uuid)
    with pytest.raises(APIError) as refused:
        client.send_update([np.ones(2)])
    assert refused.value.status_code == 403
    assert "not registered" in str(refused.value.detail)
    with pytest.raises(APIError) as reading:
        client.check_for_latest_model()
    assert reading.value.status_code == 403
    # Registration is open (as on the stock service): removal is no ban.
    assert client.register() == client.uuid
    assert client.send_update([np.ones(2)])["client"] == client.uuid


def test_a_malformed_uuid_is_a_400_naming_it(server: RunningServer, admin: AdminClient) -> None:
    model = admin.create_model("bad", initial_model=[np.ones(2)])
    for raw in ("not-a-uuid", str(uuid_module.uuid4()) + "0", "1234"):
        with pytest.raises(APIError) as refused:
            admin.remove_client(model["id"], raw)
        assert refused.value.status_code == 400
        assert refused.value.detail == {"uuid": [f"Expected a client UUID, got {raw!r}."]}


def test_an_unknown_model_or_client_is_a_json_404(
    server: RunningServer, admin: AdminClient
) -> None:
    model = admin.create_model("known", initial_model=[np.ones(2)])
    other = admin.create_model("other", initial_model=[np.ones(2)])
    (elsewhere,) = _clients(server, other["id"], 1)
    stranger = str(uuid_module.uuid4())
    for uuid in (stranger, elsewhere.uuid):
        with pytest.raises(APIError) as missing:
            admin.remove_client(model["id"], uuid)
        assert missing.value.status_code == 404
        assert missing.value.detail == {
            "detail": f"Client {uuid} is not registered with federated model {model['id']}."
        }
        assert missing.value.hint is None
    for call in (
        lambda: admin.list_clients(999),
        lambda: admin.remove_client(999, elsewhere.uuid),
    ):
        with pytest.raises(APIError) as no_model:
            call()
        assert no_model.value.status_code == 404
        assert no_model.value.detail == {"detail": "Not found."}
        assert "reference server" not in str(no_model.value)  # the route exists
    raw = requests.delete(
        f"{server.url}/api/v1/models/999/clients/{stranger}/",
        headers={"Authorization": f"Token {server.admin_token}"},
        timeout=30,
    )
    assert raw.status_code == 404
    assert raw.headers["content-type"].startswith("application/json")
