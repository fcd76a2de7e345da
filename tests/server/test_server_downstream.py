"""Downloads as deltas from the aggregate a client holds, and sparse aggregates.

A ``delta`` or ``sparse`` client names the aggregate it holds in ``Accept``; the server
answers a lossless delta from it, or, for a model with ``aggregate_fraction``, the
sparse step it stored with the aggregate. Either way the client ends up with the
aggregate the server holds, bit for bit.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from fma_connect import ConfigurationError, WebClient
from fma_connect.admin import AdminClient
from fma_connect.codecs.msgpack_numpy import MsgpackCodec
from fma_connect.codecs.sparse_delta import SparseDeltaCodec
from fma_connect.codecs.xor_delta import XorDeltaCodec
from fma_connect.server.store import Store
from fma_connect.server.testing import RunningServer, running_server

MSGPACK = MsgpackCodec.media_type
N = 4000


def _initial(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "w": (rng.standard_normal(N) * 0.05).astype(np.float32),
        "b": np.zeros(10, np.float32),
        "steps": np.arange(3, dtype=np.int64),
    }


def _trained(weights: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    out = {}
    for name, value in weights.items():
        if value.dtype.kind == "f":
            out[name] = value + (rng.standard_normal(value.shape) * 1e-2).astype(value.dtype)
        else:
            out[name] = value + 1
    return out


def _whole(server: RunningServer, uuid: str, path: str) -> dict[str, np.ndarray]:
    """Weights as the server holds them (msgpack, no delta asked for)."""
    response = requests.get(
        f"{server.url}/api/v1/{path}", headers={"CLIENT-UUID": uuid, "Accept": MSGPACK}, timeout=10
    )
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == MSGPACK
    return dict(MsgpackCodec().decode(bytearray(response.content)))


def _get(server: RunningServer, uuid: str, path: str, accept: str) -> requests.Response:
    response = requests.get(
        f"{server.url}/api/v1/{path}", headers={"CLIENT-UUID": uuid, "Accept": accept}, timeout=10
    )
    assert response.status_code == 200, response.text
    return response


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes() for k in a
    )


def _federate(
    server: RunningServer,
    admin: AdminClient,
    codec: str,
    rounds: int,
    **model: Any,
) -> tuple[int, list[WebClient], list[dict[str, np.ndarray]]]:
    """Two clients, ``rounds`` rounds; returns the model, the clients and what each
    client received per round (checked against the server's whole copy)."""
    model_id = admin.create_model(
        "downstream", requirement="all_clients", initial_model=_initial(), **model
    )["id"]
    clients = [WebClient(model_id, url=server.url, codec=codec, retries=0) for _ in range(2)]
    for client in clients:
        client.register()
    rng = np.random.default_rng(1)
    received = []
    for _ in range(rounds):
        for client in clients:
            latest = client.check_for_latest_model()
            assert latest is not None
            whole = _whole(server, client.uuid, f"models/{model_id}/get_latest_model/")
            assert _same(latest["values"], whole)
            received.append(latest["values"])
            client.send_update(_trained(latest["values"], rng), base_aggregate=latest["aggregate"])
    return model_id, clients, received


def test_a_delta_client_downloads_the_next_aggregate_as_a_delta_from_the_one_it_holds(
    server: RunningServer, admin: AdminClient
) -> None:
    model_id, clients, _ = _federate(server, admin, "delta", 3)
    client = clients[0]
    held = client._held  # the aggregate it received last: the base of the next delta
    assert held is not None and held[0] is not None
    accept = client._accept(None)
    assert f"{XorDeltaCodec.media_type}; base={held[0]}" in accept
    path = f"models/{model_id}/get_latest_model/"
    delta = _get(server, client.uuid, path, accept)
    whole = _get(server, client.uuid, path, MSGPACK)
    assert delta.headers["Content-Type"] == XorDeltaCodec.media_type
    assert len(delta.content) < len(whole.content)
    latest = client.check_for_latest_model(update_after=0)
    assert latest is not None
    assert _same(latest["values"], _whole(server, client.uuid, path))


@pytest.mark.parametrize("base", ["999", "abc", "-1", "1" * 30, ""])
def test_a_base_the_model_does_not_hold_gets_the_next_choice_of_accept(
    server: RunningServer, admin: AdminClient, base: str
) -> None:
    model_id, clients, _ = _federate(server, admin, "delta", 1)
    accept = f"{XorDeltaCodec.media_type}; base={base}, {MSGPACK}"
    response = _get(server, clients[0].uuid, f"models/{model_id}/get_latest_model/", accept)
    assert response.headers["Content-Type"] == MSGPACK


def test_another_models_aggregate_is_no_base(server: RunningServer, admin: AdminClient) -> None:
    other, _, _ = _federate(server, admin, "delta", 2)
    model_id, clients, _ = _federate(server, admin, "delta", 1)
    foreign = admin.list_aggregates(other)[0]["id"]
    accept = f"{XorDeltaCodec.media_type}; base={foreign}, {MSGPACK}"
    response = _get(server, clients[0].uuid, f"models/{model_id}/get_latest_model/", accept)
    assert response.headers["Content-Type"] == MSGPACK


def test_plain_clients_keep_the_answers_they_had(server: RunningServer, admin: AdminClient) -> None:
    model_id, _, _ = _federate(server, admin, "delta", 2, aggregate_fraction=0.1)
    plain = WebClient(model_id, url=server.url)
    plain.register()
    latest = plain.check_for_latest_model()
    assert latest is not None and isinstance(latest["values"], list)  # plain JSON lists


def test_sparse_aggregates_change_at_most_the_fraction_and_carry_the_rest(tmp_path: Path) -> None:
    with running_server(tmp_path) as server:
        _check_sparse_aggregates(server, AdminClient(server.url, server.admin_token), tmp_path)


def _check_sparse_aggregates(server: RunningServer, admin: AdminClient, data: Path) -> None:
    fraction = 0.05
    model_id, clients, received = _federate(server, admin, "delta", 4, aggregate_fraction=fraction)
    model = admin.get_model(model_id)
    assert model["aggregate_fraction"] == fraction and model["aggregate_values"] is None
    aggregates = sorted(admin.list_aggregates(model_id), key=lambda a: a["id"])
    assert len(aggregates) == 4
    uuid = clients[0].uuid
    previous = _whole(server, uuid, f"model_artifacts/{model['current_artifact']}/values/")
    for aggregate in aggregates:
        current = _whole(server, uuid, f"model_aggregates/{aggregate['id']}/result/")
        changed = np.count_nonzero(current["w"] != previous["w"])
        assert 0 < changed <= int(np.ceil(fraction * N))
        assert np.array_equal(current["steps"], previous["steps"] + 1)  # ints go whole
        previous = current
    # The residual: one copy of the float tensors, kept between rounds.
    store = Store(data / "fma.sqlite3")
    try:
        row = store.get_model(model_id)
        assert row is not None and row["residual_blob"] is not None
        blob = store.get_blob(row["residual_blob"])
        assert blob["codec"] == "msgpack"
        residual = dict(
            MsgpackCodec().decode(bytearray((data / "blobs" / blob["filename"]).read_bytes()))
        )
        assert sorted(residual) == ["b", "w"] and residual["w"].dtype == previous["w"].dtype
        assert np.count_nonzero(residual["w"]) > N // 2  # most of the change still owed
    finally:
        store.close()
    assert len(received) == 8


def test_a_client_that_holds_the_parent_gets_the_stored_step(
    server: RunningServer, admin: AdminClient
) -> None:
    model_id, clients, _ = _federate(
        server, admin, "delta", 3, aggregate_fraction=0.02, aggregate_values="ternary"
    )
    client = clients[0]
    latest = admin.list_aggregates(model_id)
    newest = max(latest, key=lambda a: a["id"])
    path = f"models/{model_id}/get_latest_model/"
    accept = f"{SparseDeltaCodec.media_type}; base={newest['parent']}, {MSGPACK}"
    step = _get(server, client.uuid, path, accept)
    assert step.headers["Content-Type"] == SparseDeltaCodec.media_type
    whole = _get(server, client.uuid, path, MSGPACK)
    assert len(step.content) < len(whole.content) / 10
    # The client's own request takes the step too, and restores the aggregate exactly.
    assert client._held is not None and client._held[0] == newest["parent"]
    got = client.check_for_latest_model()
    assert got is not None and got["aggregate"] == newest["id"]
    assert _same(got["values"], _whole(server, client.uuid, path))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("aggregate_fraction", 0),
        ("aggregate_fraction", 1.5),
        ("aggregate_fraction", True),
        ("aggregate_fraction", "0.1"),
        ("aggregate_values", "int4"),
        ("aggregate_values", 16),
    ],
)
def test_bad_sparse_aggregate_settings_are_refused(
    server: RunningServer, admin: AdminClient, field: str, value: Any
) -> None:
    response = requests.post(
        f"{server.url}/api/v1/models/",
        json={"name": "bad", "developer": 1, field: value},
        headers={"Authorization": f"Token {server.admin_token}"},
        timeout=10,
    )
    assert response.status_code == 400, response.text
    message = response.json()[field][0]
    assert "Expected" in message or "valid choice" in message
    assert str(value).lower() in message  # what arrived


def test_the_residual_survives_a_restart_and_replaced_ones_are_deleted(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with running_server(data) as (url, token):
        admin = AdminClient(url, token)
        model_id = admin.create_model(
            "restart",
            requirement="require_x_updates",
            requirement_args=[1],
            initial_model=_initial(),
            aggregate_fraction=0.05,
        )["id"]
        client = WebClient(model_id, url=url, codec="sparse", retries=0)
        rng = np.random.default_rng(2)
        for _ in range(3):
            latest = client.check_for_latest_model()
            assert latest is not None
            client.send_update(_trained(latest["values"], rng), base_aggregate=latest["aggregate"])
        uuid = client.uuid
    # initial + 3 updates + 3 aggregates + 3 steps + 1 residual: replaced residuals are gone
    assert len(list((data / "blobs").iterdir())) == 11
    with running_server(data) as (url, token):
        client = WebClient(model_id, uuid, url=url, codec="sparse", retries=0)
        latest = client.check_for_latest_model()
        assert latest is not None
        client.send_update(
            _trained(latest["values"], np.random.default_rng(3)),
            base_aggregate=latest["aggregate"],
        )
        assert len(AdminClient(url, token).list_aggregates(model_id)) == 4
    assert len(list((data / "blobs").iterdir())) == 14


def test_the_server_lists_the_codecs_it_decodes_and_a_listed_one_is_sent(
    server: RunningServer, admin: AdminClient
) -> None:
    model_id = admin.create_model("listed", initial_model=_initial())["id"]
    anonymous = requests.options(f"{server.url}/api/v1/model_updates/", timeout=10)
    assert anonymous.status_code == 401
    response = requests.options(
        f"{server.url}/api/v1/model_updates/",
        headers={"Authorization": f"Token {server.admin_token}"},
        timeout=10,
    )
    assert response.status_code == 204
    listed = [part.strip() for part in response.headers["Accept-Post"].split(",")]
    assert {"application/json", MSGPACK, XorDeltaCodec.media_type} <= set(listed)
    client = WebClient(model_id, url=server.url, codec="sparse", retries=0)
    latest = client.check_for_latest_model()
    assert latest is not None
    client.send_update(latest["values"])  # listed: sent


def test_the_stock_service_refusal_sends_no_update(monkeypatch: pytest.MonkeyPatch) -> None:
    responses = pytest.importorskip("responses")
    url = "http://stock.invalid"
    client = WebClient(1, "3f2b6c1e-8d4a-4f0b-9c1d-2e5a7b9c0d1f", url, codec="delta", retries=0)
    client._held = (None, list(_initial().items()))
    with responses.RequestsMock() as mock:  # DRF answers OPTIONS with metadata, no Accept-Post
        mock.add(responses.OPTIONS, f"{url}/api/v1/model_updates/", json={"name": "Model Update"})
        with pytest.raises(ConfigurationError, match="lists no codecs.*nothing was sent"):
            client.send_update(_initial())
        assert [call.request.method for call in mock.calls] == ["OPTIONS"]


def test_a_database_from_before_sparse_aggregates_is_upgraded_in_place(tmp_path: Path) -> None:
    with running_server(tmp_path) as (url, token):
        model_id = AdminClient(url, token).create_model("old", initial_model=_initial())["id"]
    connection = sqlite3.connect(tmp_path / "fma.sqlite3")
    for table, column in [
        ("models", "aggregate_fraction"),
        ("models", "aggregate_values"),
        ("models", "residual_blob"),
        ("aggregates", "step_blob"),
    ]:
        connection.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    connection.commit()
    connection.close()
    with running_server(tmp_path) as (url, token):
        admin = AdminClient(url, token)
        assert admin.get_model(model_id)["aggregate_fraction"] is None
        client = WebClient(model_id, url=url, codec="delta", retries=0)
        latest = client.check_for_latest_model()
        assert latest is not None
        client.send_update(latest["values"])
        assert len(admin.list_aggregates(model_id)) == 1
        response = requests.patch(
            f"{url}/api/v1/models/{model_id}/",
            json={"aggregate_fraction": 0.5},
            headers={"Authorization": f"Token {token}"},
            timeout=10,
        )
        assert response.status_code == 200, response.text
        assert admin.get_model(model_id)["aggregate_fraction"] == 0.5


def test_a_refused_options_request_is_named_and_asked_again() -> None:
    responses = pytest.importorskip("responses")
    url = "http://stock.invalid"
    client = WebClient(1, "3f2b6c1e-8d4a-4f0b-9c1d-2e5a7b9c0d1f", url, codec="sparse", retries=0)
    with responses.RequestsMock() as mock:
        mock.add(
            responses.OPTIONS,
            f"{url}/api/v1/model_updates/",
            json={"detail": "Invalid UUID"},
            status=401,
        )
        for _ in range(2):
            with pytest.raises(ConfigurationError, match="OPTIONS answered 401.*Invalid UUID"):
                client.send_update(_initial())
        assert [call.request.method for call in mock.calls] == ["OPTIONS", "OPTIONS"]
