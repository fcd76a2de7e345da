"""Identity on every route of the app, found by enumerating it, and blob path safety.

The app's routes are read from the app itself and each must be classified below, so a
new route fails this test until its access rule is stated (and then checked). Every
route refuses missing, malformed and unknown ``CLIENT-UUID`` headers, wrong tokens, and
clients that are not registered with the model (or did not send the update); every
admin route refuses clients and anonymous callers.
"""

from __future__ import annotations

import re
import socket
import sqlite3
import uuid as uuid_module
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import blake3
import numpy as np
import pytest
import requests
from reliability_figures import Figures
from starlette.routing import Route

from fma_connect import WebClient
from fma_connect.admin import AdminClient
from fma_connect.server import create_app
from fma_connect.server.blobs import BlobStore
from fma_connect.server.testing import RunningServer

ADMIN = "admin only"
READERS = "admin, or a client registered with the model"
SENDER = "admin, or the client that sent the update"
CLIENT = "a client registered with the model"
ANYONE = "anyone (a new client), or a client re-registering"
KNOWN = "admin, or any known client"
OWN = "the client that opened the upload (to anyone else, the admin too, it does not exist)"
ENROLS = "anyone holding a key (a new client), or a client binding its key"
ENROLLED = "an enrolled client, signed by its active key"

#: Every route of the app and who may call it. A route missing here fails the test.
ACCESS = {
    ("POST", "/api/v1/models/"): ADMIN,
    ("GET", "/api/v1/models/"): ADMIN,
    ("GET", "/api/v1/models/{model_id:id}/"): ADMIN,
    ("PATCH", "/api/v1/models/{model_id:id}/"): ADMIN,
    ("DELETE", "/api/v1/models/{model_id:id}/"): ADMIN,
    ("POST", "/api/v1/models/{model_id:id}/register_client/"): ANYONE,
    ("GET", "/api/v1/models/{model_id:id}/get_latest_aggregate/"): READERS,
    ("GET", "/api/v1/models/{model_id:id}/get_latest_model/"): READERS,
    ("GET", "/api/v1/models/{model_id:id}/get_current_artifact/"): READERS,
    ("POST", "/api/v1/models/{model_id:id}/aggregate/"): ADMIN,
    ("GET", "/api/v1/models/{model_id:id}/clients/"): ADMIN,
    ("DELETE", "/api/v1/models/{model_id:id}/clients/{uuid}/"): ADMIN,
    ("POST", "/api/v1/model_updates/"): CLIENT,
    ("OPTIONS", "/api/v1/model_updates/"): KNOWN,
    ("GET", "/api/v1/model_updates/"): ADMIN,
    ("GET", "/api/v1/model_updates/{id:id}/"): SENDER,
    ("GET", "/api/v1/model_updates/{id:id}/data/"): SENDER,
    ("GET", "/api/v1/model_aggregates/"): ADMIN,
    ("GET", "/api/v1/model_aggregates/{id:id}/"): READERS,
    ("GET", "/api/v1/model_aggregates/{id:id}/result/"): READERS,
    ("POST", "/api/v1/model_aggregates/{id:id}/publish_aggregate/"): ADMIN,
    ("GET", "/api/v1/model_artifacts/"): ADMIN,
    ("GET", "/api/v1/model_artifacts/{id:id}/"): READERS,
    ("GET", "/api/v1/model_artifacts/{id:id}/values/"): READERS,
    ("POST", "/api/v1/client_aggregate_scores/"): CLIENT,
    ("GET", "/api/v1/client_aggregate_scores/"): ADMIN,
    ("GET", "/api/v1/client_aggregate_scores/{id:id}/"): ADMIN,
    ("POST", "/api/v1/uploads/"): CLIENT,
    ("GET", "/api/v1/uploads/"): OWN,
    ("GET", "/api/v1/uploads/{upload:str}/"): OWN,
    ("DELETE", "/api/v1/uploads/{upload:str}/"): OWN,
    ("PUT", "/api/v1/uploads/{upload:str}/chunks/{index:int}/"): OWN,
    ("POST", "/api/v1/uploads/{upload:str}/complete/"): OWN,
    ("POST", "/api/v1/models/{model_id:id}/enrol/"): ENROLS,
    ("POST", "/api/v1/models/{model_id:id}/enrolment_tokens/"): ADMIN,
    ("GET", "/api/v1/models/{model_id:id}/allowed_keys/"): ADMIN,
    ("POST", "/api/v1/models/{model_id:id}/allowed_keys/"): ADMIN,
    ("DELETE", "/api/v1/models/{model_id:id}/allowed_keys/{key_id}/"): ADMIN,
    ("GET", "/api/v1/models/{model_id:id}/verify/"): ADMIN,
    ("POST", "/api/v1/client_keys/rotate/"): ENROLLED,
    ("GET", "/api/v1/clients/{uuid}/keys/"): ADMIN,
    ("POST", "/api/v1/clients/{uuid}/revoke/"): ADMIN,
}

MALFORMED = [
    "not-a-uuid",
    "",
    "1234",
    str(uuid_module.uuid4()) + "0",
    "../../fma.sqlite3",
    "' OR 1=1 --",
]


def app_routes(tmp_path: Path) -> set[tuple[str, str]]:
    """(method, path) of every route the app serves (HEAD aside: Starlette adds it to GET)."""
    app = create_app(tmp_path / "enumerate")
    try:
        found = set()
        for route in app.routes:
            assert isinstance(route, Route), f"unexpected route type {route!r}"
            assert route.methods, route.path
            found |= {(m, route.path) for m in route.methods if m != "HEAD"}
        return found
    finally:
        app.state.service.close()


def test_every_route_has_a_stated_access_rule(tmp_path: Path) -> None:
    routes = app_routes(tmp_path)
    assert routes - set(ACCESS) == set(), "new routes: add them to ACCESS (and think)"
    assert set(ACCESS) - routes == set(), "ACCESS lists routes the app no longer has"


@dataclass
class World:
    """A model with an update, aggregate, artifact and score, and the people around it."""

    server: RunningServer
    model: int
    ids: dict[str, int]
    sender: str  # registered, sent the update
    insider: str  # registered with the model, sent nothing
    outsider: str  # registered with another model only
    token: str
    upload: str  # opened by the sender, never completed

    def path(self, template: str) -> str:
        if template.startswith("/api/v1/uploads/"):
            return template.replace("{upload:str}", self.upload).replace("{index:int}", "0")
        return self.records_path(template)

    def records_path(self, template: str) -> str:
        collection = template.split("/")[3]
        key = {
            "models": "model",
            "model_updates": "update",
            "model_aggregates": "aggregate",
            "model_artifacts": "artifact",
            "client_aggregate_scores": "score",
            "clients": "model",  # by {uuid}
            "client_keys": "model",  # by the signed client
        }[collection]
        return (
            template.replace("{model_id:id}", str(self.model))
            .replace("{id:id}", str(self.ids[key]))
            .replace("{uuid}", self.sender)
            .replace("{key_id}", "0" * 32)
        )

    def body(self, method: str, template: str) -> Any:
        if method not in ("POST", "PATCH"):
            return None
        if template.endswith("model_updates/"):
            return {"federated_model": self.model, "data": [[1.0, 2.0]]}
        if template == "/api/v1/uploads/":
            return _manifest(self.model)
        if template.endswith("client_aggregate_scores/"):
            return {"validation_results": {"loss": 1.0}, "aggregate": self.ids["aggregate"]}
        if template.endswith("publish_aggregate/"):
            return {"version": "9.9.9"}
        if template.endswith("models/") or method == "PATCH":
            return {"name": "renamed"}
        return None

    def call(self, method: str, template: str, headers: dict[str, str]) -> requests.Response:
        return requests.request(
            method,
            self.server.url + self.path(template),
            headers=headers,
            json=self.body(method, template),
            timeout=30,
            allow_redirects=False,
        )


@pytest.fixture
def world(server: RunningServer, admin: AdminClient) -> World:
    model = admin.create_model("identity", initial_model=[np.ones(2)])
    other = admin.create_model("other")
    sender = WebClient(model["id"], url=server.url, retries=0)
    update = sender.send_update([np.ones(2)])
    (aggregate,) = admin.list_aggregates(model["id"])
    artifact = admin.publish(aggregate["id"], "1.0.0")
    score = sender.send_val_results({"loss": 0.5}, aggregate["id"])
    insider = WebClient(model["id"], url=server.url, retries=0)
    outsider = WebClient(other["id"], url=server.url, retries=0)
    opened = requests.post(
        server.url + "/api/v1/uploads/",
        json=_manifest(model["id"]),
        headers={"CLIENT-UUID": sender.uuid},
        timeout=30,
    )
    assert opened.status_code == 201, opened.text
    return World(
        server,
        model["id"],
        {
            "model": model["id"],
            "update": update["id"],
            "aggregate": aggregate["id"],
            "artifact": artifact["id"],
            "score": score["id"],
        },
        sender.uuid,
        insider.register(),
        outsider.register(),
        server.admin_token,
        opened.json()["id"],
    )


def _manifest(model_id: int) -> dict[str, Any]:
    """A resumable upload of one chunk (its bytes never sent)."""
    chunk = bytes(1 << 16)
    return {
        "federated_model": model_id,
        "media_type": "application/vnd.fma-connect.msgpack",
        "size": len(chunk),
        "chunk_size": len(chunk),
        "chunks": [blake3.blake3(chunk).hexdigest()],
    }


def _expect(response: requests.Response, status: int, what: str) -> None:
    assert response.status_code == status, (what, response.status_code, response.text[:200])
    assert response.headers["content-type"].startswith("application/json"), what
    assert "detail" in response.json(), what


def test_every_route_refuses_bad_or_missing_credentials(world: World, figures: Figures) -> None:
    refused = 0
    for (method, template), rule in sorted(ACCESS.items()):
        what = f"{method} {template}"
        registering = rule in (ANYONE, ENROLS)
        bad_client = 403 if registering else 401
        if not registering:
            _expect(world.call(method, template, {}), 401, f"{what}, anonymous")
            refused += 1
        for raw in MALFORMED:
            _expect(world.call(method, template, {"CLIENT-UUID": raw}), bad_client, what)
        unknown = {"CLIENT-UUID": str(uuid_module.uuid4())}
        _expect(world.call(method, template, unknown), bad_client, f"{what}, unknown uuid")
        for auth in ("Token not-the-token", "Token ", "Basic YWRtaW46bm9wZQ==", "Basic !!"):
            _expect(world.call(method, template, {"Authorization": auth}), 401, f"{what} {auth}")
        refused += len(MALFORMED) + 1 + 4
    figures.add("identity", "requests with bad or missing credentials refused", refused)


def test_every_route_refuses_callers_without_the_right(world: World, figures: Figures) -> None:
    refused = 0
    for (method, template), rule in sorted(ACCESS.items()):
        what = f"{method} {template}"
        outsider = {"CLIENT-UUID": world.outsider}
        insider = {"CLIENT-UUID": world.insider}
        admin = {"Authorization": f"Token {world.token}"}
        if rule in (ADMIN, READERS, SENDER, CLIENT):
            _expect(world.call(method, template, outsider), 403, f"{what}, outsider")
            refused += 1
        if rule in (ADMIN, SENDER):
            _expect(world.call(method, template, insider), 403, f"{what}, another client")
            refused += 1
        if rule in (CLIENT, OWN, ENROLLED):
            _expect(world.call(method, template, admin), 403, f"{what}, admin, no client")
            refused += 1
        if rule == ENROLLED:  # a client that never enrolled a key has none to use here
            _expect(world.call(method, template, outsider), 403, f"{what}, not enrolled")
            refused += 1
        if rule == OWN and "{upload:str}" in template:
            for other in (outsider, insider):
                _expect(world.call(method, template, other), 404, f"{what}, not its upload")
                refused += 1
    figures.add("identity", "requests from callers without the right refused", refused)


def test_callers_with_the_right_get_through(world: World) -> None:
    for (method, template), rule in sorted(ACCESS.items()):
        if method != "GET":
            continue
        allowed = [] if rule == OWN else [{"Authorization": f"Token {world.token}"}]
        if rule in (READERS, SENDER, OWN):
            allowed.append({"CLIENT-UUID": world.sender})
        if rule == READERS:
            allowed.append({"CLIENT-UUID": world.insider})
        for headers in allowed:
            response = world.call(method, template, headers)
            assert response.status_code == 200, (method, template, headers, response.text[:200])
    # Which codecs an update may be sent in: any known client may ask.
    for headers in ({"Authorization": f"Token {world.token}"}, {"CLIENT-UUID": world.outsider}):
        listed = world.call("OPTIONS", "/api/v1/model_updates/", headers)
        assert listed.status_code == 204 and "application/json" in listed.headers["Accept-Post"]
    # Registering is open: a new client, or one of another model joining this one.
    assert world.call("POST", "/api/v1/models/{model_id:id}/register_client/", {}).ok
    joined = world.call(
        "POST", "/api/v1/models/{model_id:id}/register_client/", {"CLIENT-UUID": world.outsider}
    )
    assert joined.json() == {"uuid": world.outsider}


# -- blob paths ----------------------------------------------------------------------------


def test_blob_paths_take_only_the_names_the_server_gives(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    good = "0123456789abcdef0123456789abcdef.blob"
    assert blobs.path(good) == tmp_path / "blobs" / good
    for name in [
        "../fma.sqlite3",
        "/etc/passwd",
        f"../{good}",
        f"sub/{good}",
        good.upper(),
        good + "\x00",
        ".tmp-0123456789abcdef0123456789abcdef",
        "",
    ]:
        with pytest.raises(ValueError, match="not a blob file name"):
            blobs.path(name)


def _raw_get(server: RunningServer, target: str, token: str) -> tuple[int, bytes]:
    # http.client and requests may normalise a path; a socket sends it as written.
    parts = urlsplit(server.url)
    assert parts.hostname == "127.0.0.1" and parts.port is not None
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(
            f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Token {token}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


def test_no_url_reaches_a_file_outside_the_blob_routes(
    world: World, data_dir: Path, figures: Figures
) -> None:
    update = world.ids["update"]
    (blob,) = [p.name for p in (data_dir / "blobs").iterdir() if p.stat().st_size < 100][:1]
    targets = [
        "/api/v1/model_updates/../../../fma.sqlite3",
        f"/api/v1/model_updates/{update}/data/../../../../fma.sqlite3",
        "/api/v1/model_updates/%2e%2e%2f%2e%2e%2ffma.sqlite3/data/",
        f"/api/v1/model_updates/{update}%2f..%2f..%2ffma.sqlite3/data/",
        "/api/v1/model_updates/..%5c..%5cfma.sqlite3/data/",
        f"/blobs/{blob}",
        f"/api/v1/blobs/{blob}",
        "/fma.sqlite3",
        "//etc/passwd",
    ]
    database = (data_dir / "fma.sqlite3").read_bytes()[:16]
    for target in targets:
        status, body = _raw_get(world.server, target, world.token)
        assert status in (400, 404), (target, status)
        assert database not in body and b"root:" not in body, target
    figures.add("identity", "path traversal URLs refused", len(targets))


@pytest.mark.server_errors_expected("a forged database row is the server's fault: 500")
def test_a_forged_blob_name_in_the_database_is_not_followed(world: World, data_dir: Path) -> None:
    update = world.ids["update"]
    with sqlite3.connect(data_dir / "fma.sqlite3") as db:
        (blob_id,) = db.execute("SELECT blob FROM updates WHERE id = ?", (update,)).fetchone()
        (name,) = db.execute("SELECT filename FROM blobs WHERE id = ?", (blob_id,)).fetchone()
        db.execute("UPDATE blobs SET filename = '../fma.sqlite3' WHERE id = ?", (blob_id,))
    try:
        status, body = _raw_get(world.server, f"/api/v1/model_updates/{update}/data/", world.token)
        assert status == 500
        assert b"SQLite format" not in body
        assert re.search(rb'"detail"', body)
    finally:
        with sqlite3.connect(data_dir / "fma.sqlite3") as db:
            db.execute("UPDATE blobs SET filename = ? WHERE id = ?", (name, blob_id))
