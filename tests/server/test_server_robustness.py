"""Out-of-range numbers, reused idempotency keys: 4xx JSON answers, never a 500."""

from __future__ import annotations

import pytest
from server_helpers import json_error, request

from fma_connect import WebClient
from fma_connect.admin import AdminClient
from fma_connect.server.testing import RunningServer

API = "/api/v1"
HUGE = "99999999999999999999"  # beyond int64 and uint64
INT64_OVERFLOW = str(2**63)  # still a JSON integer for orjson (it fits uint64)
MSGPACK = "application/vnd.fma-connect.msgpack"


@pytest.fixture
def client(server: RunningServer, admin: AdminClient) -> WebClient:
    model = admin.create_model("robust", allow_aggregation=False)
    web = WebClient(model["id"], url=server.url, retries=0)
    web.register()
    return web


@pytest.mark.parametrize("number", [HUGE, INT64_OVERFLOW])
def test_ids_beyond_int64_are_not_found(
    server: RunningServer, client: WebClient, number: str
) -> None:
    for path in (
        f"{API}/models/{number}/",
        f"{API}/model_updates/{number}/",
        f"{API}/model_aggregates/{number}/",
        f"{API}/model_artifacts/{number}/values/",
        f"{API}/client_aggregate_scores/{number}/",
    ):
        assert json_error(request(server, "GET", path, admin=True), 404) == {"detail": "Not found."}
    register = request(server, "POST", f"{API}/models/{number}/register_client/")
    json_error(register, 404)
    latest = f"{API}/models/{number}/get_latest_model/"
    json_error(request(server, "GET", latest, headers={"CLIENT-UUID": client.uuid}), 404)
    publish = f"{API}/model_aggregates/{number}/publish_aggregate/"
    json_error(request(server, "POST", publish, admin=True, json={"version": "1"}), 404)


@pytest.mark.parametrize("number", [HUGE, INT64_OVERFLOW])
def test_pages_beyond_int64_are_invalid(
    server: RunningServer, client: WebClient, number: str
) -> None:
    for path in ("models", "model_updates", "model_aggregates"):
        page = request(server, "GET", f"{API}/{path}/?page={number}", admin=True)
        assert json_error(page, 404) == {"detail": "Invalid page."}
    size = request(server, "GET", f"{API}/model_updates/?page_size={number}", admin=True)
    assert size.status_code == 200, size.text
    for name in ("federated_model", "status"):
        query = request(server, "GET", f"{API}/model_updates/?{name}={number}", admin=True)
        assert name in json_error(query, 400)


@pytest.mark.parametrize("number", [HUGE, INT64_OVERFLOW])
def test_huge_model_references_are_refused_with_the_right_reason(
    server: RunningServer, client: WebClient, number: str
) -> None:
    headers = {"CLIENT-UUID": client.uuid, "Content-Type": "application/json"}
    body = f'{{"federated_model": {number}, "data": [[1.0]]}}'
    response = request(server, "POST", f"{API}/model_updates/", data=body, headers=headers)
    (reason,) = json_error(response, 400)["federated_model"]
    assert "does not exist" in reason
    assert "float" not in reason
    binary = request(
        server,
        "POST",
        f"{API}/model_updates/?federated_model={number}",
        data=b"x",
        headers={"CLIENT-UUID": client.uuid, "Content-Type": MSGPACK},
    )
    assert "does not exist" in json_error(binary, 400)["federated_model"][0]
    model_id = client.federated_model_id
    for field in ("base_aggregate", "num_examples"):
        extra = f'{{"federated_model": {model_id}, "data": [[1.0]], "{field}": {number}}}'
        refused = request(server, "POST", f"{API}/model_updates/", data=extra, headers=headers)
        assert field in json_error(refused, 400)
    score = f'{{"validation_results": {{}}, "aggregate": {number}, "client": "{client.uuid}"}}'
    path = f"{API}/client_aggregate_scores/"
    scored = request(server, "POST", path, data=score, headers=headers)
    assert "aggregate" in json_error(scored, 400)


def test_model_fields_beyond_int64_are_refused(server: RunningServer) -> None:
    for field, body in (
        ("furthest_base_agg", f'{{"name": "m", "developer": 1, "furthest_base_agg": {HUGE}}}'),
        ("furthest_base_agg", f'{{"name": "m", "developer": 1, "furthest_base_agg": {2**63}}}'),
        ("developer", f'{{"name": "m", "developer": {INT64_OVERFLOW}}}'),
    ):
        response = request(
            server,
            "POST",
            f"{API}/models/",
            admin=True,
            data=body,
            headers={"Content-Type": "application/json"},
        )
        assert field in json_error(response, 400)


@pytest.mark.parametrize("number", [str(2**64), HUGE, str(-(2**63) - 1), "-" + HUGE])
def test_integers_beyond_64_bits_in_data_are_refused(
    server: RunningServer, client: WebClient, number: str
) -> None:
    headers = {"CLIENT-UUID": client.uuid, "Content-Type": "application/json"}
    body = f'{{"federated_model": {client.federated_model_id}, "data": [[1, {number}]]}}'
    response = request(server, "POST", f"{API}/model_updates/", data=body, headers=headers)
    (reason,) = json_error(response, 400)["data"]
    assert number in reason


def test_64_bit_integers_in_data_are_kept(server: RunningServer, client: WebClient) -> None:
    headers = {"CLIENT-UUID": client.uuid, "Content-Type": "application/json"}
    for number in (str(2**64 - 1), str(-(2**63)), "1e30", "1.5e19"):
        body = f'{{"federated_model": {client.federated_model_id}, "data": [[{number}]]}}'
        response = request(server, "POST", f"{API}/model_updates/", data=body, headers=headers)
        assert response.status_code == 201, response.text
        data = response.json()["data"]
        stored = request(server, "GET", data, headers={"CLIENT-UUID": client.uuid})
        assert stored.json() == [[float(number) if "e" in number else int(number)]]


def test_an_idempotency_key_reused_with_another_body_is_refused(
    server: RunningServer, admin: AdminClient, client: WebClient
) -> None:
    headers = {"CLIENT-UUID": client.uuid, "Idempotency-Key": "key-1"}
    body = {"federated_model": client.federated_model_id, "data": [[1.0, 2.0]]}
    first = request(server, "POST", f"{API}/model_updates/", json=body, headers=dict(headers))
    assert first.status_code == 201
    same = request(server, "POST", f"{API}/model_updates/", json=body, headers=dict(headers))
    assert (same.status_code, same.json()["id"]) == (200, first.json()["id"])
    other = {**body, "data": [[3.0, 4.0]]}
    reused = request(server, "POST", f"{API}/model_updates/", json=other, headers=dict(headers))
    assert "Idempotency-Key" in json_error(reused, 422)["detail"]
    binary = request(
        server,
        "POST",
        f"{API}/model_updates/?federated_model={client.federated_model_id}",
        data=b"\x00not the same body",
        headers={**headers, "Content-Type": MSGPACK},
    )
    json_error(binary, 422)
    assert len(admin.list_updates(client.federated_model_id)) == 1
