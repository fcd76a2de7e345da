"""Bad input gets a 4xx JSON answer with a reason; bad updates never poison later rounds."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgpack
import numpy as np
import pytest
from server_helpers import json_error, request, unregister

from fma_connect import APIError, WebClient, default_codec_registry
from fma_connect.admin import AdminClient
from fma_connect.server.testing import RunningServer

if TYPE_CHECKING:
    from s3_support import StoredBlobs

API = "/api/v1"
INVALID, COMPLETE, PENDING = 4, 2, 0


@pytest.fixture
def model(admin: AdminClient) -> dict[str, Any]:
    return admin.create_model("errors", requirement="require_x_updates", requirement_args=[2])


@pytest.fixture
def client(server: RunningServer, model: dict[str, Any]) -> WebClient:
    web = WebClient(model["id"], url=server.url, retries=0)
    web.register()
    return web


def test_unknown_routes_and_methods_answer_json(server: RunningServer) -> None:
    body = json_error(request(server, "GET", "/nowhere/"), 404)
    assert body == {"detail": "Not found."}
    json_error(request(server, "GET", f"{API}/models/abc/", admin=True), 404)
    wrong = json_error(request(server, "PUT", f"{API}/models/", admin=True), 405)
    assert wrong == {"detail": 'Method "PUT" not allowed.'}
    no_slash = json_error(request(server, "POST", f"{API}/models", admin=True), 404)
    assert "end with '/'" in no_slash["detail"]
    redirected = request(server, "GET", f"{API}/models", admin=True, allow_redirects=False)
    assert redirected.status_code == 301
    assert redirected.headers["Location"].endswith(f"{API}/models/")


def test_bad_update_bodies_get_400_with_a_reason(
    server: RunningServer, model: dict[str, Any], client: WebClient
) -> None:
    headers = {"CLIENT-UUID": client.uuid, "Content-Type": "application/json"}

    def post(body: bytes) -> Any:
        response = request(server, "POST", f"{API}/model_updates/", data=body, headers=headers)
        return json_error(response, 400)

    assert "detail" in post(b"{not json")
    assert "non_field_errors" in post(b"[1, 2]")
    assert post(b'{"data": [[1.0]]}') == {"federated_model": ["This field is required."]}
    missing = f'{{"federated_model": {model["id"] + 50}, "data": [[1.0]]}}'.encode()
    assert "does not exist" in post(missing)["federated_model"][0]
    assert "data" in post(f'{{"federated_model": {model["id"]}, "data": {{"a": 1}}}}'.encode())
    assert "data" in post(f'{{"federated_model": {model["id"]}, "data": "text"}}'.encode())
    ragged = f'{{"federated_model": {model["id"]}, "data": [[[1, 2], [3]]]}}'.encode()
    assert "data" in post(ragged)
    unknown_codec = {"codec": "nope", "format_version": 1, "payload": ""}
    tagged = {"federated_model": model["id"], "data": unknown_codec}
    response = request(server, "POST", f"{API}/model_updates/", json=tagged, headers=headers)
    assert "nope" in str(json_error(response, 400)["data"])
    bad_base = f'{{"federated_model": {model["id"]}, "data": [[1.0]], "base_aggregate": 99}}'
    assert "base_aggregate" in post(bad_base.encode())
    examples = f'{{"federated_model": {model["id"]}, "data": [[1.0]], "num_examples": 0}}'
    assert "num_examples" in post(examples.encode())


def test_binary_bodies_are_checked(
    server: RunningServer, model: dict[str, Any], client: WebClient
) -> None:
    headers = {"CLIENT-UUID": client.uuid, "Content-Type": "application/x-unknown"}
    path = f"{API}/model_updates/?federated_model={model['id']}"
    unsupported = request(server, "POST", path, data=b"abc", headers=headers)
    body = json_error(unsupported, 415)
    assert "application/vnd.fma-connect.msgpack" in body["accepted"]
    headers["Content-Type"] = "application/vnd.fma-connect.msgpack"
    garbage = request(server, "POST", path, data=b"\x00garbage", headers=headers)
    assert "data" in json_error(garbage, 400)
    empty = request(server, "POST", path, data=b"", headers=headers)
    assert "data" in json_error(empty, 400)
    no_model = request(server, "POST", f"{API}/model_updates/", data=b"x", headers=headers)
    assert json_error(no_model, 400) == {"federated_model": ["This field is required."]}


class _ListsNotArrays:
    """A broken plugin codec: its decode gives lists where numpy arrays belong."""

    name = "lists-not-arrays"
    media_type = "application/x-lists"
    lossless = True
    json_native = False

    def encode(self, tensors: Any) -> list[bytes]:
        return [b"x"]

    def decode(self, payload: Any) -> Any:
        return [("w", [1.0, 2.0])]


def test_a_codec_that_decodes_to_no_arrays_gets_a_400_naming_it(tmp_path: Path) -> None:
    from fma_connect import build_codec_registry, plugin_manager
    from fma_connect.server.testing import running_server

    registry = build_codec_registry(plugin_manager(autoload=False))
    registry.add(_ListsNotArrays())
    with running_server(tmp_path / "data", registry=registry) as server:
        with AdminClient(server.url, server.admin_token, retries=0) as admin:
            model = admin.create_model("broken-codec")
        client = WebClient(model["id"], url=server.url, retries=0)
        headers = {"CLIENT-UUID": client.uuid, "Content-Type": "application/x-lists"}
        path = f"{API}/model_updates/?federated_model={model['id']}"
        answer = request(server, "POST", path, data=b"x", headers=headers)
        (reason,) = json_error(answer, 400)["data"]
        assert "codec 'lists-not-arrays' is broken" in reason
        assert "(str, list)" in reason


def test_update_schema_is_enforced(server: RunningServer, admin: AdminClient) -> None:
    schema = {"type": "array", "minItems": 2, "items": {"type": "array"}}
    model = admin.create_model("schema", update_schema=schema)
    client = WebClient(model["id"], url=server.url, retries=0)
    with pytest.raises(APIError) as refused:
        client.send_update([np.ones(2)])
    assert refused.value.status_code == 400
    assert "schema" in str(refused.value.detail["data"])
    # Accepted, and averaged in the same request (no requirement): the answer says so.
    assert client.send_update([np.ones(2), np.zeros(3)])["status"] == COMPLETE


def test_invalid_model_definitions_get_400(server: RunningServer, admin: AdminClient) -> None:
    cases = [
        ({"developer": 1}, "name"),
        ({"name": "m", "developer": 99}, "developer"),
        ({"name": "m", "developer": 1, "aggregator": "geometric_median"}, "aggregator"),
        ({"name": "m", "developer": 1, "requirement": "require_x_updates"}, "requirement_args"),
        ({"name": "m", "developer": 1, "update_schema": {"type": 5}}, "update_schema"),
        ({"name": "m", "developer": 1, "clients": ["nope"]}, "clients"),
        ({"name": "m", "developer": 1, "initial_model": {"a": 1}}, "initial_model"),
    ]
    for body, field in cases:
        response = request(server, "POST", f"{API}/models/", admin=True, json=body)
        assert field in json_error(response, 400), body
    assert admin.list_models() == []


def test_publish_and_score_input_errors(
    server: RunningServer, admin: AdminClient, model: dict[str, Any], client: WebClient
) -> None:
    other = WebClient(model["id"], url=server.url, retries=0)
    client.send_update([np.ones(2)])
    other.send_update([np.zeros(2)])
    aggregate = admin.list_aggregates(model["id"])[0]
    publish = f"{API}/model_aggregates/{aggregate['id']}/publish_aggregate/"
    no_version = request(server, "POST", publish, admin=True, json={})
    assert json_error(no_version, 400) == {"version": ["This field is required."]}
    missing = f"{API}/model_aggregates/999/publish_aggregate/"
    json_error(request(server, "POST", missing, admin=True, json={"version": "1"}), 404)
    score = {"validation_results": {"acc": 1}, "aggregate": None, "client": client.uuid}
    null = request(
        server,
        "POST",
        f"{API}/client_aggregate_scores/",
        json=score,
        headers={"CLIENT-UUID": client.uuid},
    )
    assert "aggregate" in json_error(null, 400)


def test_refused_updates_never_count_and_invalid_ones_do_not_come_back(
    server: RunningServer, admin: AdminClient
) -> None:
    # The initial model defines the structure, so a mismatch is refused on arrival.
    initial = {"w": np.zeros(4, np.float32), "b": np.zeros(2, np.float32)}
    model = admin.create_model(
        "mismatch", requirement="require_x_updates", requirement_args=[2], initial_model=initial
    )
    clients = [WebClient(model["id"], url=server.url, codec="msgpack", retries=0) for _ in range(4)]
    # Stored, then its client leaves the model: a round refuses it (INVALID).
    clients[3].send_update({"w": np.full(4, 9, np.float32), "b": np.ones(2, np.float32)})
    unregister(server, model["id"], clients[3].uuid)
    with pytest.raises(APIError) as mismatched:  # refused on arrival: never stored
        clients[1].send_update({"w": np.arange(5, dtype=np.float32), "b": np.ones(2, np.float32)})
    assert mismatched.value.status_code == 400
    assert "shape" in str(mismatched.value.detail)
    with pytest.raises(APIError) as not_finite:
        clients[2].send_update({"w": np.full(4, np.nan, np.float32), "b": np.ones(2, np.float32)})
    assert not_finite.value.status_code == 400
    assert "'w' holds NaN or infinite values" in str(not_finite.value.detail)
    clients[0].send_update({"w": np.arange(4, dtype=np.float32), "b": np.ones(2, np.float32)})
    assert clients[0].check_for_new_model_aggregate() is None  # one update of a registered client
    clients[1].send_update({"w": np.arange(4, dtype=np.float32) + 2, "b": np.ones(2, np.float32)})
    first = clients[0].check_for_new_model_aggregate()
    assert first is not None
    np.testing.assert_array_equal(first["result"]["w"], np.arange(4, dtype=np.float32) + 1)
    updates = sorted(admin.list_updates(model["id"]), key=lambda u: u["id"])
    assert [u["status"] for u in updates] == [INVALID, COMPLETE, COMPLETE]
    assert "no longer registered" in updates[0]["status_reason"]

    # The refused update does not come back: the next round has only the new ones.
    for i, client in enumerate(clients[:2]):
        client.send_update({"w": np.full(4, float(i), np.float32), "b": np.zeros(2, np.float32)})
    second = clients[0].check_for_new_model_aggregate()
    assert second is not None
    assert second["parent"] == first["id"]
    np.testing.assert_array_equal(second["result"]["w"], np.full(4, 0.5, np.float32))
    statuses = [u["status"] for u in sorted(admin.list_updates(model["id"]), key=lambda u: u["id"])]
    assert statuses == [INVALID] + [COMPLETE] * 4


def test_admin_trigger_with_only_invalid_updates_reports_why(
    server: RunningServer, admin: AdminClient
) -> None:
    model = admin.create_model(
        "invalid-only", requirement="require_x_updates", requirement_args=[5]
    )
    client = WebClient(model["id"], url=server.url, codec="msgpack", retries=0)
    admin_off = admin.create_model("off", allow_aggregation=False)
    client.send_update([np.array([1.0])])
    unregister(server, model["id"], client.uuid)
    with pytest.raises(APIError) as refused:
        admin.aggregate(model["id"])
    assert refused.value.status_code == 400
    assert "no longer registered" in str(refused.value.detail)
    assert admin.list_updates(model["id"])[0]["status"] == INVALID
    with pytest.raises(APIError) as disabled:
        admin.aggregate(admin_off["id"])
    assert disabled.value.status_code == 400


def test_idempotency_key_stores_one_update(
    server: RunningServer, admin: AdminClient, model: dict[str, Any], client: WebClient
) -> None:
    headers = {"CLIENT-UUID": client.uuid, "Idempotency-Key": "retry-1"}
    body = {"federated_model": model["id"], "data": [[1.0, 2.0]], "base_aggregate": None}
    first = request(server, "POST", f"{API}/model_updates/", json=body, headers=headers)
    assert first.status_code == 201
    again = request(server, "POST", f"{API}/model_updates/", json=body, headers=dict(headers))
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    packed = msgpack.packb({"not": "a payload"})
    binary_headers = {**headers, "Content-Type": "application/vnd.fma-connect.msgpack"}
    path = f"{API}/model_updates/?federated_model={model['id']}"
    replay = request(server, "POST", path, data=packed, headers=binary_headers)
    assert replay.status_code == 422  # the key of another update: refused, not its answer
    assert "Idempotency-Key" in replay.json()["detail"]
    assert len(admin.list_updates(model["id"])) == 1
    # A binary update sent twice with one key is stored once too.
    codec = default_codec_registry().get("msgpack")
    payload = b"".join(bytes(chunk) for chunk in codec.encode([("0", np.ones(2))]))
    binary_headers = {**binary_headers, "Idempotency-Key": "retry-2"}
    once = request(server, "POST", path, data=payload, headers=dict(binary_headers))
    twice = request(server, "POST", path, data=payload, headers=dict(binary_headers))
    assert (once.status_code, twice.status_code) == (201, 200)
    assert twice.json()["id"] == once.json()["id"]
    assert len(admin.list_updates(model["id"])) == 2


def test_pages_are_newest_first(
    server: RunningServer, admin: AdminClient, client: WebClient
) -> None:
    model = admin.create_model("pages", allow_aggregation=False)
    sender = WebClient(model["id"], url=server.url, retries=0)
    for i in range(12):
        sender.send_update([np.full(2, float(i))])
    path = f"{API}/model_updates/?federated_model={model['id']}"
    page1 = request(server, "GET", path, admin=True).json()
    assert len(page1) == 10  # the default page size
    page2 = request(server, "GET", path + "&page=2", admin=True).json()
    ids = [u["id"] for u in page1 + page2]
    assert ids == sorted(ids, reverse=True)
    assert len(ids) == 12
    small = request(server, "GET", path + "&page_size=5&page=3", admin=True).json()
    assert [u["id"] for u in small] == ids[10:]
    past = request(server, "GET", path + "&page=3", admin=True)
    assert json_error(past, 404) == {"detail": "Invalid page."}
    assert len(admin.list_updates(model["id"])) == 12


@pytest.mark.server_errors_expected("a payload lost from the server's store is its own fault")
def test_a_lost_payload_is_a_json_500_and_an_invalid_update(
    server: RunningServer, admin: AdminClient, data_dir: Path, stored_blobs: StoredBlobs
) -> None:
    model = admin.create_model("lost", requirement="require_x_updates", requirement_args=[9])
    client = WebClient(model["id"], url=server.url, retries=0)
    update = client.send_update([np.ones(3)])
    stored_blobs.delete_all()
    headers = {"CLIENT-UUID": client.uuid, "Accept": "application/vnd.fma-connect.msgpack"}
    lost = request(server, "GET", update["data"], headers=headers)
    assert "Internal server error" in json_error(lost, 500)["detail"]
    with pytest.raises(APIError) as refused:
        admin.aggregate(model["id"])
    assert refused.value.status_code == 400
    (stored,) = admin.list_updates(model["id"])
    assert stored["status"] == INVALID
    assert "cannot be read" in stored["status_reason"]
    assert str(data_dir) not in stored["status_reason"]
