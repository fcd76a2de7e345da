"""Identity rules: CLIENT-UUID for federated clients, a token for admins, as documented."""

from __future__ import annotations

import base64
import uuid

import numpy as np
import pytest
import requests

from fma_connect import APIError, WebClient
from fma_connect.admin import AdminClient
from fma_connect.server.testing import RunningServer

API = "/api/v1"
MALFORMED = {"detail": '"not-a-uuid" is not a valid UUID.'}
UNKNOWN = {"detail": "Invalid UUID"}


@pytest.fixture
def model_id(admin: AdminClient) -> int:
    model = admin.create_model("auth", requirement="require_x_updates", requirement_args=[5])
    return int(model["id"])


def _get(server: RunningServer, path: str, **headers: str) -> requests.Response:
    return requests.get(server.url + API + path, headers=headers, timeout=10)


def _post(
    server: RunningServer, path: str, body: object = None, **headers: str
) -> requests.Response:
    return requests.post(server.url + API + path, json=body, headers=headers, timeout=10)


@pytest.mark.parametrize(
    "path", ["get_latest_model", "get_latest_aggregate", "get_current_artifact"]
)
def test_client_routes_check_the_client_uuid(
    server: RunningServer, model_id: int, path: str
) -> None:
    route = f"/models/{model_id}/{path}/"
    missing = _get(server, route)
    assert missing.status_code == 401
    assert missing.json() == {"detail": "Authentication credentials were not provided."}
    malformed = _get(server, route, **{"CLIENT-UUID": "not-a-uuid"})
    assert (malformed.status_code, malformed.json()) == (401, MALFORMED)
    unknown = _get(server, route, **{"CLIENT-UUID": str(uuid.uuid4())})
    assert (unknown.status_code, unknown.json()) == (401, UNKNOWN)
    client = WebClient(model_id, url=server.url, retries=0)
    ok = _get(server, route, **{"CLIENT-UUID": client.uuid})
    assert (ok.status_code, ok.json()) == (200, {})
    gone = _get(server, f"/models/{model_id + 100}/{path}/", **{"CLIENT-UUID": client.uuid})
    assert (gone.status_code, gone.json()) == (404, {"detail": "Not found."})


def test_register_client_answers_403_to_a_bad_uuid(server: RunningServer, model_id: int) -> None:
    route = f"/models/{model_id}/register_client/"
    malformed = _post(server, route, **{"CLIENT-UUID": "not-a-uuid"})
    assert (malformed.status_code, malformed.json()) == (403, MALFORMED)
    unknown = _post(server, route, **{"CLIENT-UUID": str(uuid.uuid4())})
    assert (unknown.status_code, unknown.json()) == (403, UNKNOWN)
    fresh = _post(server, route)
    assert fresh.status_code == 200
    client = fresh.json()["uuid"]
    again = _post(server, route, **{"CLIENT-UUID": client})
    assert (again.status_code, again.json()) == (200, {"uuid": client})
    missing = _post(server, f"/models/{model_id + 100}/register_client/")
    assert (missing.status_code, missing.json()) == (404, {"detail": "Not found."})


def test_client_of_another_model_is_refused(
    server: RunningServer, admin: AdminClient, model_id: int
) -> None:
    other = admin.create_model("other")
    outsider = WebClient(other["id"], url=server.url, retries=0)
    outsider.register()
    intruder = WebClient(model_id, uuid=outsider.uuid, url=server.url, retries=0)
    with pytest.raises(APIError) as update:
        intruder.send_update([np.ones(3)])
    assert update.value.status_code == 403
    with pytest.raises(APIError) as latest:
        intruder.check_for_latest_model()
    assert latest.value.status_code == 403
    assert admin.list_updates(model_id) == []  # the refused update was not stored


def test_update_and_score_need_a_client(server: RunningServer, model_id: int) -> None:
    body = {"federated_model": model_id, "data": [[1.0]], "base_aggregate": None}
    anonymous = _post(server, "/model_updates/", body)
    assert anonymous.status_code == 401
    assert "detail" in anonymous.json()
    unknown = _post(server, "/model_updates/", body, **{"CLIENT-UUID": str(uuid.uuid4())})
    assert (unknown.status_code, unknown.json()) == (401, UNKNOWN)
    score = {"validation_results": {}, "aggregate": 1, "client": str(uuid.uuid4())}
    malformed = _post(server, "/client_aggregate_scores/", score, **{"CLIENT-UUID": "not-a-uuid"})
    assert (malformed.status_code, malformed.json()) == (401, MALFORMED)


def test_admin_routes_need_the_admin_token(server: RunningServer, model_id: int) -> None:
    missing = _get(server, "/models/")
    assert missing.status_code == 401
    assert missing.json() == {"detail": "Authentication credentials were not provided."}
    wrong = _get(server, "/models/", Authorization="Token 0123456789abcdef")
    assert (wrong.status_code, wrong.json()) == (401, {"detail": "Invalid token."})
    client = WebClient(model_id, url=server.url, retries=0)
    as_client = _get(server, "/models/", **{"CLIENT-UUID": client.uuid})
    assert as_client.status_code == 403
    create = _post(server, "/models/", {"name": "x"}, **{"CLIENT-UUID": client.uuid})
    assert create.status_code == 403
    trigger = _post(server, f"/models/{model_id}/aggregate/")
    assert trigger.status_code == 401
    token = _get(server, "/models/", Authorization=f"Token {server.admin_token}")
    assert token.status_code == 200
    assert [m["id"] for m in token.json()] == [model_id]
    basic = base64.b64encode(f"admin:{server.admin_token}".encode()).decode()
    assert _get(server, "/models/", Authorization=f"Basic {basic}").status_code == 200
    bad_basic = base64.b64encode(b"admin:wrong").decode()
    assert _get(server, "/models/", Authorization=f"Basic {bad_basic}").status_code == 401


def test_admin_reads_client_routes_too(
    server: RunningServer, admin: AdminClient, model_id: int
) -> None:
    answer = _get(
        server, f"/models/{model_id}/get_latest_model/", Authorization=f"Token {server.admin_token}"
    )
    assert (answer.status_code, answer.json()) == (200, {})
