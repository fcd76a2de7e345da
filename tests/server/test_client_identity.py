"""Client identity on the reference server (docs/SECURITY.md): enrolment by token and by
allow-listed key, signed requests (missing, replayed, stale, another client's key),
signed updates (one bit changed, another key), revocation, rotation, ``admin verify``,
and open models working as before."""

from __future__ import annotations

import hashlib
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import requests

from fma_connect import APIError, ClientKey, WebClient
from fma_connect.admin import AdminClient
from fma_connect.cli import main
from fma_connect.plugins import default_codec_registry
from fma_connect.server.testing import RunningServer, running_server
from fma_connect.signing import UPDATE_SIGNATURE_HEADER, url_with_query

MSGPACK = "application/vnd.fma-connect.msgpack"


def _model(admin: AdminClient, enrolment: str, **options: Any) -> int:
    model = admin.create_model(
        f"{enrolment} model", enrolment=enrolment, initial_model=[np.ones(2)], **options
    )
    assert model["enrolment"] == enrolment
    return int(model["id"])


def _enrolled(
    server: RunningServer, admin: AdminClient, model_id: int, **options: Any
) -> tuple[WebClient, ClientKey]:
    """A new client with a new key, enrolled with a token of the model."""
    key = ClientKey.generate()
    client = WebClient(model_id, url=server.url, identity=key, retries=0, **options)
    client.enrol(token=admin.enrolment_token(model_id)["token"])
    return client, key


def _signed(
    server: RunningServer,
    key: ClientKey,
    uuid: str | None,
    method: str,
    path: str,
    *,
    params: dict[str, Any] | None = None,
    now: float | None = None,
    **options: Any,
) -> requests.Response:
    """A request signed by ``key`` as ``uuid``, sent raw."""
    url = url_with_query(server.url + path, params)
    headers = dict(options.pop("headers", {}))
    if uuid is not None:
        headers["CLIENT-UUID"] = uuid
    headers.update(key.request_headers(method, url, uuid, now=now))
    return requests.request(method, url, headers=headers, timeout=30, **options)


def _refused(response: requests.Response, status: int, words: str) -> None:
    assert response.status_code == status, response.text[:300]
    assert response.headers["content-type"].startswith("application/json")
    assert words in str(response.json()), response.json()


def _msgpack(values: np.ndarray) -> bytes:
    codec = default_codec_registry().get("msgpack")
    return b"".join(bytes(b) for b in codec.encode([("0", values)]))


#: The Idempotency-Key the updates sent raw here are signed with (and sent with).
IDEMPOTENCY_KEY = "update-1"


def _binary_update(key: ClientKey, uuid: str, model_id: int) -> tuple[bytes, str]:
    """A msgpack update's body and its update signature (for :data:`IDEMPOTENCY_KEY`)."""
    body = _msgpack(np.full(2, 3.0))
    fields = {"federated_model": model_id, "base_aggregate": None}
    sha256 = hashlib.sha256(body).hexdigest()
    signature = key.sign_update(
        uuid, fields, None, sha256, codec="msgpack", idempotency_key=IDEMPOTENCY_KEY
    )
    return body, signature


# -- open models ----------------------------------------------------------------------------


def test_an_open_model_works_as_before_and_verifies(
    server: RunningServer, admin: AdminClient
) -> None:
    model = admin.create_model("open", requirement="require_x_updates", requirement_args=[2])
    assert model["enrolment"] == "open"
    plain = WebClient(model["id"], url=server.url, retries=0)
    plain.register()
    plain.send_update([np.ones(2)])
    signed = WebClient(model["id"], url=server.url, identity=ClientKey.generate(), retries=0)
    signed.enrol()  # an open model needs no token: the key is bound all the same
    signed.send_update([np.full(2, 3.0)])
    aggregate = plain.check_for_new_model_aggregate()
    assert aggregate is not None
    np.testing.assert_array_equal(aggregate["result"][0], [2.0, 2.0])
    report = admin.verify(model["id"])
    assert report["ok"] and (report["signed"], report["unsigned"]) == (1, 1), report
    assert report["inputs"] == {str(aggregate["id"]): sorted(report["inputs"]["1"])}


def test_enrolment_is_checked_at_create_and_patch(admin: AdminClient) -> None:
    with pytest.raises(APIError) as refused:
        admin.create_model("bad", enrolment="tokens")
    assert refused.value.status_code == 400
    assert "expected one of: keys, open, token" in str(refused.value.detail["enrolment"])
    model = admin.create_model("patched")
    assert admin.update_model(model["id"], enrolment="keys")["enrolment"] == "keys"
    with pytest.raises(APIError, match=r"'x' \(string\) is not a valid choice"):
        admin.update_model(model["id"], enrolment="x")


# -- enrolment ------------------------------------------------------------------------------


def test_a_token_model_takes_only_clients_enrolled_with_a_one_time_token(
    server: RunningServer, admin: AdminClient, data_dir: Path, database: str | None
) -> None:
    model_id = _model(admin, "token")
    plain = WebClient(model_id, url=server.url, retries=0)
    with pytest.raises(APIError, match="requires enrolment") as refused:
        plain.register()
    assert refused.value.status_code == 403
    key = ClientKey.generate()
    client = WebClient(model_id, url=server.url, identity=key, retries=0)
    with pytest.raises(APIError, match="one-time token"):
        client.enrol()
    token = admin.enrolment_token(model_id)["token"]
    uuid = client.enrol(token=token)
    client.send_update([np.ones(2)])
    other = WebClient(model_id, url=server.url, identity=ClientKey.generate(), retries=0)
    with pytest.raises(APIError, match="was used already"):
        other.enrol(token=token)
    with pytest.raises(APIError, match="not an enrolment token"):
        other.enrol(token="made-up")
    assert [row["client"] for row in admin.list_updates(model_id)] == [uuid]
    assert [row["status"] for row in admin.client_keys(uuid)] == ["active"]
    if database is None:  # the SQLite file holds the token's hash, never the token
        stored = (data_dir / "fma.sqlite3").read_bytes() + _wal(data_dir)
        assert token.encode() not in stored
        assert hashlib.sha256(token.encode()).hexdigest().encode() in stored


def test_a_client_registered_before_enrolment_was_required_is_refused_until_it_enrols(
    server: RunningServer, admin: AdminClient
) -> None:
    model_id = _model(admin, "open", requirement="require_x_updates", requirement_args=[9])
    plain = WebClient(model_id, url=server.url, retries=0)
    plain.register()
    admin.update_model(model_id, enrolment="token")
    with pytest.raises(APIError, match="lacks the enrolment it requires") as refused:
        plain.send_update([np.ones(2)])
    assert refused.value.status_code == 403
    with pytest.raises(APIError, match="requires enrolment"):
        plain.register()
    assert admin.list_updates(model_id) == []
    keyed = WebClient(model_id, plain.uuid, server.url, identity=ClientKey.generate(), retries=0)
    with pytest.raises(APIError, match="bound to that client"):  # a UUID proves nothing
        keyed.enrol(token=admin.enrolment_token(model_id)["token"])
    bound = admin.enrolment_token(model_id, client=plain.uuid)["token"]
    assert keyed.enrol(token=bound) == plain.uuid
    keyed.send_update([np.ones(2)])
    assert len(admin.list_updates(model_id)) == 1


def _wal(data_dir: Path) -> bytes:
    wal = data_dir / "fma.sqlite3-wal"
    return wal.read_bytes() if wal.exists() else b""


def test_an_enrolment_token_expires_on_the_servers_clock(data_dir: Path) -> None:
    now = [time.time()]
    with running_server(data_dir, clock=lambda: now[0]) as server:
        admin = AdminClient(server.url, server.admin_token, retries=0)
        model_id = _model(admin, "token")
        token = admin.enrolment_token(model_id, expires_in=60)["token"]
        now[0] += 61
        client = WebClient(model_id, url=server.url, identity=ClientKey.generate(), retries=0)
        with pytest.raises(APIError, match="has expired"):
            client.enrol(token=token)


def test_a_keys_model_takes_allow_listed_keys_and_drops_one_at_once(
    server: RunningServer, admin: AdminClient
) -> None:
    model_id = _model(admin, "keys")
    key = ClientKey.generate()
    client = WebClient(model_id, url=server.url, identity=key, retries=0)
    with pytest.raises(APIError, match="not on federated model"):
        client.enrol()
    admin.allow_key(model_id, key.public_key)
    assert [row["key_id"] for row in admin.allowed_keys(model_id)] == [key.key_id]
    client.enrol()
    client.send_update([np.ones(2)])
    admin.disallow_key(model_id, key.key_id)
    with pytest.raises(APIError, match="lacks the enrolment") as refused:
        client.send_update([np.ones(2)])
    assert refused.value.status_code == 403
    with pytest.raises(APIError) as again:
        client.check_for_latest_model()
    assert again.value.status_code == 403
    assert len(admin.list_updates(model_id)) == 1


# -- signed requests ------------------------------------------------------------------------


def test_requests_of_an_enrolled_client_must_be_signed_by_its_key(
    server: RunningServer, admin: AdminClient
) -> None:
    model_id = _model(admin, "token")
    client, key = _enrolled(server, admin, model_id)
    path = f"/api/v1/models/{model_id}/get_latest_model/"
    unsigned = requests.get(server.url + path, headers={"CLIENT-UUID": client.uuid}, timeout=30)
    _refused(unsigned, 401, "every request must be signed")
    assert _signed(server, key, client.uuid, "GET", path).status_code == 200
    # Another client's key, under its own key id or this client's.
    _, stranger = _enrolled(server, admin, model_id)
    _refused(_signed(server, stranger, client.uuid, "GET", path), 401, "Expected a signature")
    forged = stranger.request_headers("GET", server.url + path, client.uuid)
    forged["FMA-Key-Id"] = key.key_id
    sent = requests.get(
        server.url + path, headers={"CLIENT-UUID": client.uuid, **forged}, timeout=30
    )
    _refused(sent, 401, "does not verify")
    # Signed for another path or query.
    headers = key.request_headers("GET", server.url + path, client.uuid)
    moved = requests.get(
        server.url + path + "?x=1", headers={"CLIENT-UUID": client.uuid, **headers}, timeout=30
    )
    _refused(moved, 401, "does not verify")


def test_a_replayed_or_stale_request_is_refused_and_stores_nothing(
    server: RunningServer, admin: AdminClient
) -> None:
    model_id = _model(admin, "token")
    client, key = _enrolled(server, admin, model_id)
    uuid = client.uuid
    body, signature = _binary_update(key, uuid, model_id)
    url = url_with_query(f"{server.url}/api/v1/model_updates/", {"federated_model": model_id})
    headers = {
        "CLIENT-UUID": uuid,
        "Content-Type": MSGPACK,
        UPDATE_SIGNATURE_HEADER: signature,
        "Idempotency-Key": IDEMPOTENCY_KEY,
        **key.request_headers("POST", url, uuid),
    }
    assert requests.post(url, data=body, headers=headers, timeout=30).status_code == 201
    _refused(requests.post(url, data=body, headers=headers, timeout=30), 401, "used before")
    stale = {**headers, **key.request_headers("POST", url, uuid, now=time.time() - 301)}
    _refused(requests.post(url, data=body, headers=stale, timeout=30), 401, "behind the server")
    ahead = {**headers, **key.request_headers("POST", url, uuid, now=time.time() + 301)}
    _refused(requests.post(url, data=body, headers=ahead, timeout=30), 401, "ahead of")
    assert len(admin.list_updates(model_id)) == 1


def test_a_replay_and_a_revocation_hold_on_every_replica(
    tmp_path: Path, data_dir: Path, database: str | None
) -> None:
    if database is None:
        pytest.skip("replicas share a PostgreSQL database; a SQLite file has one server")
    with running_server(data_dir) as one, running_server(tmp_path / "replica") as two:
        admin = AdminClient(one.url, one.admin_token, retries=0)
        model_id = _model(admin, "token")
        client, key = _enrolled(one, admin, model_id)
        path = f"/api/v1/models/{model_id}/get_latest_model/"
        headers = {"CLIENT-UUID": client.uuid}
        headers.update(key.request_headers("GET", one.url + path, client.uuid))
        assert requests.get(one.url + path, headers=headers, timeout=30).status_code == 200
        replayed = requests.get(two.url + path, headers=headers, timeout=30)
        _refused(replayed, 401, "used before")
        assert _signed(two, key, client.uuid, "GET", path).status_code == 200
        admin.revoke(client.uuid)
        _refused(_signed(two, key, client.uuid, "GET", path), 401, "was revoked")


def test_the_timestamp_window_is_the_servers_clock(data_dir: Path) -> None:
    now = [time.time()]
    with running_server(data_dir, clock=lambda: now[0]) as server:
        admin = AdminClient(server.url, server.admin_token, retries=0)
        model_id = _model(admin, "token")
        client, key = _enrolled(server, admin, model_id)
        path = f"/api/v1/models/{model_id}/get_current_artifact/"
        now[0] += 299  # the client's clock is 299 s behind the server's: still accepted
        assert _signed(server, key, client.uuid, "GET", path).status_code == 200
        now[0] += 2
        _refused(_signed(server, key, client.uuid, "GET", path), 401, "300 s either way")


# -- signed updates -------------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["json", "msgpack"])
def test_an_update_changed_by_one_bit_is_refused_and_not_stored(
    server: RunningServer, admin: AdminClient, codec: str
) -> None:
    model_id = _model(admin, "token")
    client, key = _enrolled(server, admin, model_id)
    uuid = client.uuid
    fields = {"federated_model": model_id, "base_aggregate": None}
    if codec == "json":
        data = [[1.0, 2.0]]
        sha256 = hashlib.sha256(orjson.dumps(data)).hexdigest()
        signature = key.sign_update(
            uuid, fields, None, sha256, codec="json", idempotency_key=IDEMPOTENCY_KEY
        )
        body = orjson.dumps({**fields, "data": [[1.0, 3.0]]})  # 2.0 -> 3.0: one bit
        kind, params = "application/json", None
    else:
        _, signature = _binary_update(key, uuid, model_id)
        # One bit of one value (its lowest mantissa bit), re-encoded as a tamperer would
        # (a bit flipped in place is caught by the codec's crc32 before the signature).
        body = _msgpack(np.array([np.nextafter(3.0, 4.0), 3.0]))
        kind, params = MSGPACK, {"federated_model": model_id}
    sent = _signed(
        server,
        key,
        uuid,
        "POST",
        "/api/v1/model_updates/",
        params=params,
        data=body,
        headers={
            "Content-Type": kind,
            UPDATE_SIGNATURE_HEADER: signature,
            "Idempotency-Key": IDEMPOTENCY_KEY,
        },
    )
    _refused(sent, 400, "it does not verify")
    assert admin.list_updates(model_id) == []


def test_an_update_signed_by_another_key_or_unsigned_is_refused(
    server: RunningServer, admin: AdminClient
) -> None:
    model_id = _model(admin, "token")
    client, key = _enrolled(server, admin, model_id)
    _, other = _enrolled(server, admin, model_id)
    body, _ = _binary_update(key, client.uuid, model_id)
    _, foreign = _binary_update(other, client.uuid, model_id)
    for headers, words in (
        ({UPDATE_SIGNATURE_HEADER: foreign}, "it does not verify"),
        ({}, "none was sent"),
        ({UPDATE_SIGNATURE_HEADER: "bm90IDY0IGJ5dGVz"}, "base64 of 64 bytes"),
    ):
        sent = _signed(
            server,
            key,
            client.uuid,
            "POST",
            "/api/v1/model_updates/",
            params={"federated_model": model_id},
            data=body,
            headers={"Content-Type": MSGPACK, "Idempotency-Key": IDEMPOTENCY_KEY, **headers},
        )
        _refused(sent, 400, words)
    assert admin.list_updates(model_id) == []


def test_a_resumable_upload_is_signed_and_verified_at_completion(
    server: RunningServer, admin: AdminClient
) -> None:
    model_id = admin.create_model("large", enrolment="token")["id"]
    client, _ = _enrolled(
        server, admin, model_id, codec="msgpack", resumable_from=1, upload_chunk_size=1 << 16
    )
    update = client.send_update([np.arange(40_000, dtype=np.float64)])
    assert update["id"] == 1
    report = admin.verify(model_id)
    assert report["ok"] and report["signed"] == 1, report


def test_a_json_update_is_signed_as_the_server_stores_it(
    server: RunningServer, admin: AdminClient
) -> None:
    # Named float32 layers: sent as orjson writes float32 and with tensor_names; stored
    # as the server writes the parsed lists back. The signature covers what is stored.
    model_id = admin.create_model("json", enrolment="token")["id"]
    client, _ = _enrolled(server, admin, model_id)
    weights = {"w": np.array([0.1, 1e-8, 3.4e38], np.float32), "b": np.array([1.0, -0.0])}
    client.send_update(weights)
    report = admin.verify(model_id)
    assert report["ok"] and report["signed"] == 1, report


# -- revocation and rotation ----------------------------------------------------------------


def _sent_one(server: RunningServer, admin: AdminClient) -> tuple[int, WebClient, ClientKey]:
    """A token model (no round before 9 updates) and an enrolled client that sent one."""
    model_id = _model(admin, "token", requirement="require_x_updates", requirement_args=[9])
    client, key = _enrolled(server, admin, model_id)
    client.send_update([np.ones(2)])
    return model_id, client, key


def test_a_revoked_key_needs_a_new_enrolment_and_its_updates_still_verify(
    server: RunningServer, admin: AdminClient
) -> None:
    model_id, client, key = _sent_one(server, admin)
    uuid = client.uuid
    assert admin.revoke(uuid, key.key_id)["revoked_keys"] == [key.key_id]
    with pytest.raises(APIError, match="no active key") as refused:
        client.send_update([np.ones(2)])
    assert refused.value.status_code == 401
    unsigned = requests.get(
        f"{server.url}/api/v1/models/{model_id}/get_latest_model/",
        headers={"CLIENT-UUID": uuid},
        timeout=30,
    )
    _refused(unsigned, 401, "no active key")  # never again on its UUID alone
    fresh = WebClient(model_id, uuid, server.url, identity=ClientKey.generate(), retries=0)
    assert fresh.enrol(token=admin.enrolment_token(model_id, client=uuid)["token"]) == uuid
    fresh.send_update([np.ones(2)])
    report = admin.verify(model_id)
    assert report["ok"] and report["signed"] == 2, report
    # Update 1 was waiting when its key was revoked: set aside, never averaged.
    note = f"signed by key {key.key_id}, since revoked; set aside (INVALID), in no aggregate"
    assert report["notes"] == [{"update": 1, "note": note}]


def test_a_client_rotates_its_key(server: RunningServer, admin: AdminClient) -> None:
    model_id, client, old = _sent_one(server, admin)
    new = ClientKey.generate()
    assert client.rotate_key(new) == new.key_id
    client.send_update([np.ones(2)])
    path = f"/api/v1/models/{model_id}/get_latest_model/"
    _refused(_signed(server, old, client.uuid, "GET", path), 401, "Expected a signature")
    assert _signed(server, new, client.uuid, "GET", path).status_code == 200
    statuses = {row["key_id"]: row["status"] for row in admin.client_keys(client.uuid)}
    assert statuses == {old.key_id: "rotated", new.key_id: "active"}
    assert admin.verify(model_id)["ok"]
    # The new key must prove it is held: a proof by another key is refused.
    proof = ClientKey.generate().sign_rotation(client.uuid, new.key_id)
    sent = _signed(
        server,
        new,
        client.uuid,
        "POST",
        "/api/v1/client_keys/rotate/",
        json={"public_key": ClientKey.generate().public_key, "proof": proof},
    )
    _refused(sent, 400, "does not verify")


# -- admin verify ---------------------------------------------------------------------------


def test_an_averaged_update_of_a_key_revoked_since_is_a_plain_note(
    server: RunningServer, admin: AdminClient
) -> None:
    model_id, client, key = _sent_one(server, admin)
    admin.aggregate(model_id)  # averaged while its key was active
    admin.revoke(client.uuid, key.key_id)
    report = admin.verify(model_id)
    assert report["ok"], report
    assert report["notes"] == [{"update": 1, "note": f"signed by key {key.key_id}, since revoked"}]


@pytest.mark.local_blobs("it alters a stored blob's file in the data directory")
def test_admin_verify_reports_an_update_altered_on_disk(
    server: RunningServer,
    admin: AdminClient,
    data_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model_id = _model(admin, "token", requirement="require_x_updates", requirement_args=[2])
    first, _ = _enrolled(server, admin, model_id, codec="msgpack")
    second, _ = _enrolled(server, admin, model_id, codec="msgpack")
    first.send_update([np.full(2, 5.0)])
    second.send_update([np.full(2, 7.0)])
    argv = ["admin", "--url", server.url, "--token", server.admin_token, "verify", str(model_id)]
    assert main(argv) == 0
    assert "2 updates (2 signed, 0 unsigned), 1 aggregates: OK" in capsys.readouterr().out
    stored = requests.get(
        f"{server.url}/api/v1/model_updates/1/data/",
        headers={"Authorization": f"Token {server.admin_token}", "Accept": MSGPACK},
        timeout=30,
    ).content
    (blob,) = [p for p in (data_dir / "blobs").iterdir() if p.read_bytes() == stored]
    altered = bytearray(stored)
    altered[-1] ^= 0x80
    blob.write_bytes(bytes(altered))
    report = admin.verify(model_id)
    assert not report["ok"]
    assert [p.get("update") for p in report["problems"]] == [1, None]
    assert "altered in storage" in report["problems"][0]["problem"]
    assert report["problems"][1] == {
        "aggregate": 1,
        "problem": "it averaged update 1, which fails verification",
    }
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert "FAIL update 1:" in out and "FAIL aggregate 1:" in out and "2 problem(s)" in out


def test_enrolment_tokens_are_hex_so_a_command_line_takes_each_as_a_value(
    server: RunningServer, admin: AdminClient
) -> None:
    # A base64url token begins with '-' one time in 64, and `--token -x...` then fails
    # to parse (this file's CLI test failed so once).
    model_id = _model(admin, "token")
    tokens = [admin.enrolment_token(model_id)["token"] for _ in range(16)]
    assert all(re.fullmatch("[0-9a-f]{64}", token) for token in tokens), tokens
    assert len(set(tokens)) == len(tokens)


def test_the_keys_commands_enrol_and_rotate(
    server: RunningServer, admin: AdminClient, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model_id = _model(admin, "token")
    old, new = tmp_path / "old.key", tmp_path / "new.key"
    for path in (old, new):
        assert main(["keys", "create", str(path)]) == 0
    capsys.readouterr()
    token = admin.enrolment_token(model_id)["token"]
    enrol = ["keys", "enrol", str(old), "--model", str(model_id), "--token", token]
    assert main([*enrol, "--url", server.url]) == 0
    uuid = orjson.loads(capsys.readouterr().out)["uuid"]
    assert main(["keys", "rotate", str(old), str(new), "--uuid", uuid, "--url", server.url]) == 0
    assert orjson.loads(capsys.readouterr().out)["key_id"] == ClientKey.load(new).key_id
    keys = {row["key_id"]: row["status"] for row in admin.client_keys(uuid)}
    assert keys == {ClientKey.load(old).key_id: "rotated", ClientKey.load(new).key_id: "active"}
    admin_argv = ["admin", "--url", server.url, "--token", server.admin_token]
    assert main([*admin_argv, "revoke", uuid]) == 0
    assert orjson.loads(capsys.readouterr().out)["client_revoked"] is True
    listed = {row["key_id"]: row for row in admin.client_keys(uuid)}
    rotated, revoked = listed[ClientKey.load(old).key_id], listed[ClientKey.load(new).key_id]
    assert revoked["status"] == "revoked" and revoked["revoked_on"] is not None
    assert revoked["retired_on"] == revoked["revoked_on"]  # it signed until revoked
    assert rotated["revoked_on"] is not None  # revoking a client revokes every key of it
    assert rotated["retired_on"] <= rotated["revoked_on"]  # it stopped at the rotation
    client = WebClient(model_id, uuid, server.url, identity=ClientKey.load(new), retries=0)
    with pytest.raises(APIError, match="was revoked"):
        client.check_for_latest_model()
