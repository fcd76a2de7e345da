"""Revocation at once and what signed updates bind (docs/SECURITY.md): a revoked client's
or key's waiting updates leave the next round, a body or a long-poll in flight across a
revocation is refused, an old signed update is not replayed under a new request, a key
rotated during a resumable upload still completes it, and ``admin verify`` finds deleted
signature rows, deleted aggregate inputs and a changed codec."""

from __future__ import annotations

import hashlib
import http.client
import threading
import time
import urllib.parse
import uuid as uuid_module
from pathlib import Path
from typing import Any

import blake3
import numpy as np
import pytest
import requests
from starlette.routing import Route

from fma_connect import ClientKey, WebClient
from fma_connect.admin import AdminClient
from fma_connect.plugins import default_codec_registry
from fma_connect.server import create_app
from fma_connect.server.database import open_database
from fma_connect.server.keys import Keys
from fma_connect.server.store import Store
from fma_connect.server.store_core import RUNNING, NewBlob
from fma_connect.server.store_rounds import InputsChanged
from fma_connect.server.testing import RunningServer
from fma_connect.signing import UPDATE_SIGNATURE_HEADER, url_with_query

MSGPACK = "application/vnd.fma-connect.msgpack"
INVALID = 4


def _model(admin: AdminClient, enrolment: str, **options: Any) -> int:
    model = admin.create_model(
        f"{enrolment} model", enrolment=enrolment, initial_model=[np.ones(2)], **options
    )
    return int(model["id"])


def _enrolled(
    server: RunningServer, admin: AdminClient, model_id: int
) -> tuple[WebClient, ClientKey]:
    key = ClientKey.generate()
    client = WebClient(model_id, url=server.url, identity=key, retries=0)
    client.enrol(token=admin.enrolment_token(model_id)["token"])
    return client, key


def _msgpack(values: np.ndarray) -> bytes:
    codec = default_codec_registry().get("msgpack")
    return b"".join(bytes(b) for b in codec.encode([("0", values)]))


def _signed_update(
    key: ClientKey, uuid: str, model_id: int, body: bytes, idempotency_key: str
) -> str:
    fields = {"federated_model": model_id, "base_aggregate": None}
    sha256 = hashlib.sha256(body).hexdigest()
    return key.sign_update(
        uuid, fields, None, sha256, codec="msgpack", idempotency_key=idempotency_key
    )


def _post_update(
    server: RunningServer,
    key: ClientKey,
    uuid: str,
    model_id: int,
    body: bytes,
    signature: str,
    idempotency_key: str | None,
) -> requests.Response:
    url = url_with_query(f"{server.url}/api/v1/model_updates/", {"federated_model": model_id})
    headers = {"CLIENT-UUID": uuid, "Content-Type": MSGPACK, UPDATE_SIGNATURE_HEADER: signature}
    if idempotency_key is not None:
        headers["Idempotency-Key"] = idempotency_key
    headers.update(key.request_headers("POST", url, uuid))
    return requests.post(url, data=body, headers=headers, timeout=30)


def _one_signed_update(
    server: RunningServer, admin: AdminClient
) -> tuple[int, WebClient, ClientKey, bytes, str, str]:
    """A token model (no round before 9 updates), an enrolled client, and a msgpack
    update's body, Idempotency-Key and update signature (not sent)."""
    model_id = _model(admin, "token", requirement="require_x_updates", requirement_args=[9])
    client, key = _enrolled(server, admin, model_id)
    body = _msgpack(np.full(2, 3.0))
    idem = str(uuid_module.uuid4())
    return model_id, client, key, body, idem, _signed_update(key, client.uuid, model_id, body, idem)


class _Db:
    """The server's database, opened beside it (a test's hand in the tables)."""

    def __init__(self, data_dir: Path, database: str | None) -> None:
        self.db = open_database(database, data_dir / "fma.sqlite3")

    def run(self, sql: str, params: tuple[Any, ...] = ()) -> None:
        with self.db.transaction() as conn:
            conn.execute(sql, params)

    def close(self) -> None:
        self.db.close()


# -- revocation and waiting updates (finding 2) --------------------------------------------


def test_a_revoked_clients_pending_update_leaves_the_round(
    server: RunningServer, admin: AdminClient
) -> None:
    # Repro 4: three clients, one sends 1000 and is revoked (a stolen key).
    model_id = _model(admin, "token", requirement="require_x_updates", requirement_args=[3])
    clients = [_enrolled(server, admin, model_id)[0] for _ in range(3)]
    bad = clients[0].send_update([np.full(2, 1000.0)])
    assert admin.revoke(clients[0].uuid)["client_revoked"] is True
    (stored,) = admin.list_updates(model_id)
    assert stored["id"] == bad["id"] and stored["status"] == INVALID
    clients[1].send_update([np.full(2, 1.0)])
    clients[2].send_update([np.full(2, 3.0)])
    aggregate = admin.aggregate(model_id)  # the requirement (3) is no longer met
    got = clients[1].check_for_new_model_aggregate()
    assert got is not None and got["id"] == aggregate["id"]
    np.testing.assert_array_equal(got["result"][0], [2.0, 2.0])  # the honest clients' mean
    report = admin.verify(model_id)
    assert report["ok"], report


def test_a_round_whose_input_is_revoked_while_it_runs_runs_again_without_it(
    server: RunningServer, admin: AdminClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_id = _model(admin, "token", requirement="require_x_updates", requirement_args=[9])
    clients = [_enrolled(server, admin, model_id)[0] for _ in range(3)]
    for client, value in zip(clients, (1000.0, 1.0, 3.0), strict=True):
        client.send_update([np.full(2, value)])
    record_round = Store.record_round
    calls: list[list[int]] = []

    def revoked_meanwhile(store: Store, model: int, *args: Any, **kwargs: Any) -> Any:
        calls.append(list(args[2]))  # the updates this attempt averaged
        if len(calls) == 1:  # the first attempt: the stolen key is revoked as it runs
            Keys(store, time.time).revoke(clients[0].uuid, None)
        return record_round(store, model, *args, **kwargs)

    monkeypatch.setattr(Store, "record_round", revoked_meanwhile)
    aggregate = admin.aggregate(model_id)
    monkeypatch.undo()
    first, second = calls
    assert len(first) == 3 and sorted(second) == sorted(first)[1:]  # run again, without it
    got = clients[1].check_for_new_model_aggregate()
    assert got is not None and got["id"] == aggregate["id"]
    np.testing.assert_array_equal(got["result"][0], [2.0, 2.0])  # the honest clients' mean
    statuses = {u["id"]: u["status"] for u in admin.list_updates(model_id)}
    assert sorted(statuses.values()) == [2, 2, INVALID]
    assert admin.verify(model_id)["ok"]


def test_a_revoked_or_disallowed_keys_pending_updates_leave_the_round(
    server: RunningServer, admin: AdminClient
) -> None:
    model_id = _model(admin, "token", requirement="require_x_updates", requirement_args=[9])
    client, key = _enrolled(server, admin, model_id)
    client.send_update([np.ones(2)])
    admin.revoke(client.uuid, key.key_id)
    assert [u["status"] for u in admin.list_updates(model_id)] == [INVALID]
    keyed = _model(admin, "keys", requirement="require_x_updates", requirement_args=[9])
    allowed = ClientKey.generate()
    admin.allow_key(keyed, allowed.public_key)
    member = WebClient(keyed, url=server.url, identity=allowed, retries=0)
    member.enrol()
    member.send_update([np.ones(2)])
    admin.disallow_key(keyed, allowed.key_id)
    assert [u["status"] for u in admin.list_updates(keyed)] == [INVALID]


def test_verify_reports_an_input_of_a_key_revoked_before_its_aggregate(
    server: RunningServer, admin: AdminClient, data_dir: Path, database: str | None
) -> None:
    model_id = _model(admin, "token", requirement="require_x_updates", requirement_args=[2])
    first, key = _enrolled(server, admin, model_id)
    second, _ = _enrolled(server, admin, model_id)
    first.send_update([np.ones(2)])
    second.send_update([np.ones(2)])
    assert admin.verify(model_id)["ok"]
    db = _Db(data_dir, database)
    try:  # as if the round had committed an input its revocation should have stopped
        db.run(
            "UPDATE client_keys SET status = 'revoked', revoked_on = ?, retired_on = ? "
            "WHERE key_id = ?",
            ("2000-01-01T00:00:00.000000Z", "2000-01-01T00:00:00.000000Z", key.key_id),
        )
    finally:
        db.close()
    report = admin.verify(model_id)
    assert not report["ok"]
    assert any(
        p.get("aggregate") == 1 and "revoked before" in p["problem"] for p in report["problems"]
    ), report


# -- in flight across a revocation (finding 3) ---------------------------------------------


def test_a_body_that_arrives_after_the_revocation_is_refused(
    server: RunningServer, admin: AdminClient
) -> None:
    model_id, client, key, body, idem, signature = _one_signed_update(server, admin)
    url = url_with_query(f"{server.url}/api/v1/model_updates/", {"federated_model": model_id})
    headers = {
        "CLIENT-UUID": client.uuid,
        "Content-Type": MSGPACK,
        UPDATE_SIGNATURE_HEADER: signature,
        "Idempotency-Key": idem,
        "Content-Length": str(len(body)),
        **key.request_headers("POST", url, client.uuid),
    }
    parts = urllib.parse.urlsplit(url)
    out: dict[str, Any] = {}
    started = threading.Event()

    def send() -> None:
        conn = http.client.HTTPConnection(str(parts.hostname), parts.port, timeout=30)
        conn.putrequest("POST", f"{parts.path}?{parts.query}")
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.endheaders()
        conn.send(body[:5])
        started.set()
        time.sleep(1.5)
        conn.send(body[5:])
        response = conn.getresponse()
        out["status"], out["body"] = response.status, response.read()

    thread = threading.Thread(target=send)
    thread.start()
    started.wait(10)
    time.sleep(0.5)  # the headers were authenticated by now
    admin.revoke(client.uuid)
    thread.join(30)
    assert out["status"] == 401, out
    assert b"was revoked" in out["body"]
    assert admin.list_updates(model_id) == []


def test_a_long_poll_is_answered_401_once_its_client_is_revoked(
    server: RunningServer, admin: AdminClient
) -> None:
    model_id = _model(admin, "token", requirement="require_x_updates", requirement_args=[1])
    held, key = _enrolled(server, admin, model_id)
    other, _ = _enrolled(server, admin, model_id)
    url = f"{server.url}/api/v1/models/{model_id}/get_latest_aggregate/?wait=20&after=-1"
    got: dict[str, Any] = {}

    def wait() -> None:
        headers = {"CLIENT-UUID": held.uuid, **key.request_headers("GET", url, held.uuid)}
        response = requests.get(url, headers=headers, timeout=40)
        got["status"], got["text"] = response.status_code, response.text

    thread = threading.Thread(target=wait)
    thread.start()
    time.sleep(1.0)
    admin.revoke(held.uuid)
    other.send_update([np.full(2, 5.0)])  # wakes the held request
    thread.join(40)
    assert got["status"] == 401 and "was revoked" in got["text"], got


def test_a_revoked_client_is_refused_on_every_route_at_once(
    server: RunningServer, admin: AdminClient, tmp_path: Path
) -> None:
    model_id = _model(admin, "token", requirement="require_x_updates", requirement_args=[9])
    client, key = _enrolled(server, admin, model_id)
    client.send_update([np.ones(2)])
    admin.revoke(client.uuid)
    app = create_app(tmp_path / "enumerate")
    try:
        routes = sorted(
            (method, route.path)
            for route in app.routes
            if isinstance(route, Route)
            for method in route.methods or ()
            if method != "HEAD"
        )
    finally:
        app.state.service.close()
    assert len(routes) > 40
    for method, template in routes:
        path = (
            template.replace("{model_id:id}", str(model_id))
            .replace("{id:id}", "1")
            .replace("{uuid}", client.uuid)
            .replace("{key_id}", key.key_id)
            .replace("{upload:str}", "0" * 32)
            .replace("{index:int}", "0")
        )
        url = server.url + path
        headers = {"CLIENT-UUID": client.uuid, **key.request_headers(method, url, client.uuid)}
        sent = requests.request(method, url, headers=headers, timeout=30)
        status = 403 if template.endswith(("register_client/", "enrol/")) else 401
        assert sent.status_code == status, (method, template, sent.text[:200])
        assert "was revoked" in sent.text, (method, template, sent.text[:200])
    assert len(admin.list_updates(model_id)) == 1


# -- what an update signature binds (findings 9, 12, 5) --------------------------------------


def test_an_old_signed_update_is_not_replayed_under_a_new_request(
    server: RunningServer, admin: AdminClient
) -> None:
    model_id, client, key, body, idem, signature = _one_signed_update(server, admin)
    first = _post_update(server, key, client.uuid, model_id, body, signature, idem)
    assert first.status_code == 201, first.text
    again = _post_update(server, key, client.uuid, model_id, body, signature, idem)
    assert again.json()["id"] == first.json()["id"]  # the same update, as a resend is
    fresh = _post_update(server, key, client.uuid, model_id, body, signature, "another-key")
    assert fresh.status_code == 400 and "does not verify" in fresh.text, fresh.text
    none = _post_update(server, key, client.uuid, model_id, body, signature, None)
    assert none.status_code == 400 and "Idempotency-Key" in none.text, none.text
    assert len(admin.list_updates(model_id)) == 1


def test_a_key_rotated_during_a_resumable_upload_completes_it(
    server: RunningServer, admin: AdminClient
) -> None:
    model_id = int(admin.create_model("large", enrolment="token")["id"])
    client, old = _enrolled(server, admin, model_id)
    uuid = client.uuid
    body = _msgpack(np.arange(20_000, dtype=np.float64))
    chunk = 1 << 16
    pieces = [body[i : i + chunk] for i in range(0, len(body), chunk)]
    idem = str(uuid_module.uuid4())
    manifest = {
        "federated_model": model_id,
        "media_type": MSGPACK,
        "size": len(body),
        "chunk_size": chunk,
        "chunks": [blake3.blake3(p).hexdigest() for p in pieces],
    }

    def call(key: ClientKey, method: str, path: str, **options: Any) -> requests.Response:
        url = server.url + path
        headers = {"CLIENT-UUID": uuid, **options.pop("headers", {})}
        headers.update(key.request_headers(method, url, uuid))
        return requests.request(method, url, headers=headers, timeout=30, **options)

    signature = _signed_update(old, uuid, model_id, body, idem)
    opened = call(
        old,
        "POST",
        "/api/v1/uploads/",
        json=manifest,
        headers={UPDATE_SIGNATURE_HEADER: signature, "Idempotency-Key": idem},
    )
    assert opened.status_code == 201, opened.text
    upload = opened.json()["id"]
    for index, piece in enumerate(pieces):
        put = call(old, "PUT", f"/api/v1/uploads/{upload}/chunks/{index}/", data=piece)
        assert put.status_code == 204, put.text
    new = ClientKey.generate()
    assert client.rotate_key(new) == new.key_id
    done = call(new, "POST", f"/api/v1/uploads/{upload}/complete/")
    assert done.status_code == 201, done.text
    report = admin.verify(model_id)
    assert report["ok"] and report["signed"] == 1, report


def test_verify_finds_a_deleted_signature_a_deleted_input_and_a_changed_codec(
    server: RunningServer, admin: AdminClient, data_dir: Path, database: str | None
) -> None:
    model_id = _model(admin, "open", requirement="require_x_updates", requirement_args=[2])
    first = WebClient(model_id, url=server.url, identity=ClientKey.generate(), retries=0)
    first.enrol()
    second = WebClient(
        model_id, url=server.url, identity=ClientKey.generate(), retries=0, codec="msgpack"
    )
    second.enrol()
    one = first.send_update([np.full(2, 3.0)])
    two = second.send_update([np.full(2, 5.0)])
    assert admin.verify(model_id)["ok"]
    db = _Db(data_dir, database)
    try:
        db.run("DELETE FROM update_signatures WHERE update_id = ?", (one["id"],))
        report = admin.verify(model_id)
        assert any(
            p.get("update") == one["id"] and "had an active key" in p["problem"]
            for p in report["problems"]
        ), report
        db.run(
            "UPDATE blobs SET codec = 'json' WHERE id = (SELECT blob FROM updates WHERE id = ?)",
            (two["id"],),
        )
        report = admin.verify(model_id)
        assert any(
            p.get("update") == two["id"] and "does not verify" in p["problem"]
            for p in report["problems"]
        ), report
        db.run("DELETE FROM update_signatures WHERE update_id = ?", (two["id"],))
        db.run("DELETE FROM updates WHERE id = ?", (two["id"],))
        report = admin.verify(model_id)
        assert any(
            p.get("aggregate") == 1 and "inputs" in p["problem"] and "2" in p["problem"]
            for p in report["problems"]
        ), report
    finally:
        db.close()


def test_an_update_signature_covers_the_codec(server: RunningServer, admin: AdminClient) -> None:
    model_id = _model(admin, "token")
    client, key = _enrolled(server, admin, model_id)
    body = _msgpack(np.full(2, 3.0))
    idem = str(uuid_module.uuid4())
    fields = {"federated_model": model_id, "base_aggregate": None}
    other = key.sign_update(
        client.uuid,
        fields,
        None,
        hashlib.sha256(body).hexdigest(),
        codec="json",
        idempotency_key=idem,
    )
    sent = _post_update(server, key, client.uuid, model_id, body, other, idem)
    assert sent.status_code == 400 and "does not verify" in sent.text
    assert admin.list_updates(model_id) == []


def test_a_round_does_not_commit_an_input_revoked_while_it_ran(
    tmp_path: Path, database: str | None
) -> None:
    store = Store(tmp_path / "fma.sqlite3", database)
    try:
        store.ensure_admin(None)
        fields = {"name": "m", "developer": 1, "aggregator": "avg_values_if_data"}
        model_id = store.insert_model({**fields, "allow_aggregation": True}, [], None)
        client = store.register_client(model_id, None)
        ids = []
        for i in range(2):
            row, _ = store.insert_update(
                {"federated_model": model_id, "client": client},
                NewBlob("msgpack", f"{i:032x}.blob", 1),
                None,
            )
            ids.append(row["id"])
        store.set_update_status(ids, RUNNING)
        Keys(store, time.time).revoke(client, None)  # while the round runs
        with pytest.raises(InputsChanged) as refused:
            store.record_round(model_id, NewBlob("msgpack", "a" * 32 + ".blob", 1), "x", ids, {})
        assert refused.value.ids == ids
        assert store.latest_aggregate(model_id) is None  # nothing of that round was written
        assert {store.get_update(i)["status"] for i in ids} == {INVALID}  # type: ignore[index]
    finally:
        store.close()
