"""Resumable uploads on the reference server: the protocol, and what it refuses.

Each test talks to a real server on 127.0.0.1, with plain requests for the protocol's
edges and with WebClient for what a user sees.
"""

from __future__ import annotations

import itertools
import os
import socket
import time
from pathlib import Path
from typing import Any

import blake3
import numpy as np
import pytest
import requests

from fma_connect import WebClient
from fma_connect.admin import AdminClient
from fma_connect.codecs.msgpack_numpy import MsgpackCodec
from fma_connect.server.testing import RunningServer

UPLOADS = "/api/v1/uploads/"
MSGPACK = MsgpackCodec.media_type
CHUNK = 64 << 10


def _payload(seed: int, tensors: int = 4, size: int = 1 << 16) -> bytes:
    rng = np.random.default_rng(seed)
    arrays = [(f"t{i}", rng.standard_normal(size).astype(np.float32)) for i in range(tensors)]
    return b"".join(bytes(memoryview(c)) for c in MsgpackCodec().encode(arrays))


def _chunks(body: bytes, size: int = CHUNK) -> list[bytes]:
    return [body[i : i + size] for i in range(0, len(body), size)]


def _manifest(model_id: int, body: bytes, **extra: Any) -> dict[str, Any]:
    return {
        "federated_model": model_id,
        "media_type": MSGPACK,
        "size": len(body),
        "chunk_size": CHUNK,
        "chunks": [blake3.blake3(c).hexdigest() for c in _chunks(body)],
        **extra,
    }


class Upload:
    """A client of the protocol itself, one request per call."""

    def __init__(self, server: RunningServer, uuid: str) -> None:
        self.url = server.url
        self.headers = {"CLIENT-UUID": uuid}

    def open(self, manifest: dict[str, Any]) -> requests.Response:
        return requests.post(self.url + UPLOADS, json=manifest, headers=self.headers, timeout=30)

    def put(self, upload: str, index: int, data: bytes, **headers: str) -> requests.Response:
        return requests.put(
            f"{self.url}{UPLOADS}{upload}/chunks/{index}/",
            data=data,
            headers={**self.headers, "Content-Type": "application/octet-stream", **headers},
            timeout=30,
        )

    def complete(self, upload: str) -> requests.Response:
        url = f"{self.url}{UPLOADS}{upload}/complete/"
        return requests.post(url, headers=self.headers, timeout=30)

    def get(self, upload: str) -> requests.Response:
        return requests.get(f"{self.url}{UPLOADS}{upload}/", headers=self.headers, timeout=30)


@pytest.fixture
def model_id(admin: AdminClient) -> int:
    model = admin.create_model("uploads", requirement="require_x_updates", requirement_args=[99])
    return int(model["id"])


def _client(server: RunningServer, model_id: int, **options: Any) -> WebClient:
    client = WebClient(model_id, url=server.url, codec="msgpack", retries=0, **options)
    client.register()
    return client


def _stored(server: RunningServer, client: WebClient, update: dict[str, Any]) -> bytes:
    response = requests.get(
        server.url + update["data"],
        headers={"CLIENT-UUID": client.uuid, "Accept": MSGPACK},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return response.content


def test_chunks_in_any_order_make_one_update_of_exactly_those_bytes(
    server: RunningServer, model_id: int, admin: AdminClient
) -> None:
    client = _client(server, model_id)
    body = _payload(1)
    protocol = Upload(server, client.uuid)
    opened = protocol.open(_manifest(model_id, body, num_examples=5))
    assert opened.status_code == 201, opened.text
    upload = opened.json()
    pieces = _chunks(body)
    assert upload["missing"] == list(range(len(pieces))) and upload["received_bytes"] == 0
    for index in reversed(range(len(pieces))):
        assert protocol.put(upload["id"], index, pieces[index]).status_code == 204
    assert admin.list_updates(model_id) == []  # nothing visible before it completes
    done = protocol.complete(upload["id"])
    assert done.status_code == 201, done.text
    update = done.json()
    assert update["num_examples"] == 5 and update["codec"] == "msgpack"
    assert _stored(server, client, update) == body
    # Completing again (an answer lost on the way) gives the same update, not a second.
    again = protocol.complete(upload["id"])
    assert again.status_code == 200 and again.json()["id"] == update["id"]
    assert [u["id"] for u in admin.list_updates(model_id)] == [update["id"]]


def test_the_same_manifest_finds_the_same_open_upload_with_what_it_lacks(
    server: RunningServer, model_id: int
) -> None:
    client = _client(server, model_id)
    body = _payload(2)
    protocol = Upload(server, client.uuid)
    first = protocol.open(_manifest(model_id, body)).json()
    protocol.put(first["id"], 0, _chunks(body)[0])
    protocol.put(first["id"], 2, _chunks(body)[2])
    resumed = protocol.open(_manifest(model_id, body))
    assert resumed.status_code == 200
    state = resumed.json()
    assert state["id"] == first["id"]
    assert 0 not in state["missing"] and 2 not in state["missing"] and 1 in state["missing"]
    assert state["received_bytes"] == 2 * CHUNK
    # Another client sending the same bytes gets its own upload: uploads are private.
    other = _client(server, model_id)
    theirs = Upload(server, other.uuid).open(_manifest(model_id, body)).json()
    assert theirs["id"] != first["id"]
    assert Upload(server, other.uuid).get(first["id"]).status_code == 404
    assert Upload(server, other.uuid).put(first["id"], 1, _chunks(body)[1]).status_code == 404


def test_hostile_chunks_are_refused_and_leave_the_upload_as_it_was(
    server: RunningServer, model_id: int, admin: AdminClient
) -> None:
    client = _client(server, model_id)
    body = _payload(3)
    pieces = _chunks(body)
    protocol = Upload(server, client.uuid)
    upload = protocol.open(_manifest(model_id, body)).json()["id"]
    wrong = protocol.put(upload, 0, bytes(len(pieces[0])))  # right length, wrong digest
    assert wrong.status_code == 422 and "blake3" in wrong.json()["detail"]
    short = protocol.put(upload, 0, pieces[0][:-1])
    assert short.status_code == 400 and str(CHUNK) in short.json()["detail"]
    assert protocol.put(upload, len(pieces), b"x").status_code == 404  # past the end
    assert protocol.put(upload, -1, b"x").status_code == 404
    assert protocol.put("0" * 32, 0, pieces[0]).status_code == 404  # no such upload
    assert protocol.put("../../etc", 0, pieces[0]).status_code == 404
    assert protocol.get(upload).json()["missing"] == list(range(len(pieces)))
    incomplete = protocol.complete(upload)
    assert incomplete.status_code == 409
    assert incomplete.json()["missing"] == list(range(len(pieces)))
    assert admin.list_updates(model_id) == []


def test_chunks_from_anyone_but_the_uploads_client_are_refused(
    server: RunningServer, model_id: int
) -> None:
    client, other = _client(server, model_id), _client(server, model_id)
    body = _payload(4)
    pieces = _chunks(body)
    upload = Upload(server, client.uuid).open(_manifest(model_id, body)).json()["id"]
    # Another registered client does not see the upload at all.
    assert Upload(server, other.uuid).put(upload, 0, pieces[0]).status_code == 404
    # A caller that is no registered client is refused.
    stranger = Upload(server, "0" * 32).put(upload, 0, pieces[0])
    assert stranger.status_code == 401 and stranger.json() == {"detail": "Invalid UUID"}
    anonymous = requests.put(f"{server.url}{UPLOADS}{upload}/chunks/0/", data=pieces[0], timeout=30)
    assert anonymous.status_code == 401, anonymous.text
    protocol = Upload(server, client.uuid)
    assert protocol.get(upload).json()["missing"] == list(range(len(pieces)))
    assert protocol.put(upload, 0, pieces[0]).status_code == 204  # the client's own: taken


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"size": 0}, "size"),
        ({"chunk_size": 1000}, "chunk_size"),
        ({"chunk_size": 128 << 20}, "chunk_size"),
        ({"chunks": []}, "chunks"),
        ({"chunks": ["zz" * 32] * 5}, "chunks"),
        ({"federated_model": 999}, "federated_model"),
        ({"base_aggregate": 12}, "base_aggregate"),
    ],
)
def test_a_bad_manifest_gets_a_400_naming_its_field(
    server: RunningServer, model_id: int, change: dict[str, Any], field: str
) -> None:
    client = _client(server, model_id)
    manifest = {**_manifest(model_id, _payload(4)), **change}
    answer = Upload(server, client.uuid).open(manifest)
    assert answer.status_code == 400, answer.text
    assert field in answer.json()


def test_json_and_unknown_media_types_are_refused_with_415(
    server: RunningServer, model_id: int
) -> None:
    client = _client(server, model_id)
    for kind in ("application/json", "application/x-unknown"):
        manifest = {**_manifest(model_id, _payload(5)), "media_type": kind}
        answer = Upload(server, client.uuid).open(manifest)
        assert answer.status_code == 415 and MSGPACK in answer.json()["accepted"]


def test_an_upload_that_does_not_decode_is_refused_and_forgotten(
    server: RunningServer, model_id: int, admin: AdminClient
) -> None:
    client = _client(server, model_id)
    body = bytes(3 * CHUNK)  # not msgpack
    protocol = Upload(server, client.uuid)
    upload = protocol.open(_manifest(model_id, body)).json()["id"]
    for index, piece in enumerate(_chunks(body)):
        protocol.put(upload, index, piece)
    answer = protocol.complete(upload)
    assert answer.status_code == 400 and "data" in answer.json()
    assert protocol.get(upload).status_code == 404
    assert admin.list_updates(model_id) == []


@pytest.mark.local_blobs(
    "it damages an upload's part file in the data directory (in S3 a chunk is an object)"
)
def test_a_chunk_damaged_before_a_restart_is_found_at_completion_and_asked_for_again(
    data_dir: Path,
) -> None:
    from fma_connect.server.testing import running_server

    body = _payload(6)
    pieces = _chunks(body)
    with running_server(data_dir) as server:
        admin = AdminClient(server.url, server.admin_token, retries=0)
        model = admin.create_model("restart", requirement="require_x_updates", requirement_args=[9])
        client = _client(server, model["id"])
        upload = Upload(server, client.uuid).open(_manifest(model["id"], body)).json()["id"]
        for index, piece in enumerate(pieces):
            assert Upload(server, client.uuid).put(upload, index, piece).status_code == 204
    # What a crash of the machine can do to bytes acknowledged but not yet synced:
    with open(data_dir / "uploads" / f"{upload}.part", "r+b") as part:
        part.seek(CHUNK + 10)
        part.write(b"\xff")
    with running_server(data_dir) as server:
        protocol = Upload(server, client.uuid)
        answer = protocol.complete(upload)
        assert answer.status_code == 409 and answer.json()["missing"] == [1]
        assert protocol.put(upload, 1, pieces[1]).status_code == 204
        done = protocol.complete(upload)
        assert done.status_code == 201
        assert _stored(server, client, done.json()) == body


def test_a_newer_request_for_a_chunk_takes_over_from_one_still_arriving(
    server: RunningServer, model_id: int
) -> None:
    client = _client(server, model_id)
    body = _payload(11)
    pieces = _chunks(body)
    protocol = Upload(server, client.uuid)
    upload = protocol.open(_manifest(model_id, body)).json()["id"]
    # The old request: its head and half its bytes, then silence (a link gone quiet).
    old = _stale_put(server, client.uuid, upload, 0, len(pieces[0]))
    assert protocol.put(upload, 0, pieces[0]).status_code == 204
    old.sendall(bytes(len(pieces[0]) - len(pieces[0]) // 2))
    answer = old.recv(1 << 16).decode("latin1")
    old.close()
    assert answer.startswith("HTTP/1.1 409"), answer[:200]
    for index, piece in enumerate(pieces[1:], start=1):
        protocol.put(upload, index, piece)
    done = protocol.complete(upload)
    assert done.status_code == 201
    assert _stored(server, client, done.json()) == body


def _stale_put(server: RunningServer, uuid: str, upload: str, index: int, size: int) -> Any:
    """A PUT of chunk ``index`` whose head and first half (zeros) arrived, then silence."""
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    head = (
        f"PUT {UPLOADS}{upload}/chunks/{index}/ HTTP/1.1\r\nHost: {host}\r\n"
        f"CLIENT-UUID: {uuid}\r\nContent-Length: {size}\r\n\r\n"
    )
    sock.sendall(head.encode() + bytes(size // 2))
    time.sleep(0.2)  # for the server to write them: the point of the tests that use it
    return sock


def test_chunks_arrive_whole_when_the_file_system_takes_few_bytes_a_call(
    server: RunningServer, model_id: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write call may take fewer bytes than it was given: the rest is written too, so a
    chunk whose digest matched is never recorded with bytes missing from the file."""
    real = os.pwrite

    def short(fd: int, data: Any, offset: int) -> int:
        return real(fd, memoryview(data)[:1000], offset)

    monkeypatch.setattr(os, "pwrite", short)  # the server runs in this process
    client = _client(server, model_id)
    body = _payload(14)
    protocol = Upload(server, client.uuid)
    upload = protocol.open(_manifest(model_id, body)).json()["id"]
    for index, piece in enumerate(_chunks(body)):
        assert protocol.put(upload, index, piece).status_code == 204
    done = protocol.complete(upload)
    assert done.status_code == 201
    assert _stored(server, client, done.json()) == body


@pytest.mark.local_blobs(
    "only in the local part file, written in place, does a stale write reach a published chunk"
)
def test_a_completion_stops_a_stale_chunk_write_and_checks_what_it_wrote(
    server: RunningServer, model_id: int
) -> None:
    client = _client(server, model_id)
    body = _payload(13)
    pieces = _chunks(body)
    protocol = Upload(server, client.uuid)
    upload = protocol.open(_manifest(model_id, body)).json()["id"]
    for index, piece in enumerate(pieces):
        protocol.put(upload, index, piece)
    stale = _stale_put(server, client.uuid, upload, 0, len(pieces[0]))
    answer = protocol.complete(upload)  # chunk 0 was half overwritten with zeros
    assert answer.status_code == 409 and answer.json()["missing"] == [0]
    stale.sendall(bytes(len(pieces[0]) - len(pieces[0]) // 2))
    assert stale.recv(1 << 16).decode("latin1").startswith("HTTP/1.1 409")
    stale.close()
    assert protocol.put(upload, 0, pieces[0]).status_code == 204
    done = protocol.complete(upload)
    assert done.status_code == 201
    assert _stored(server, client, done.json()) == body


def test_webclient_sends_large_updates_in_chunks_and_unchanged_chunks_not_at_all(
    server: RunningServer, model_id: int
) -> None:
    seen: list[tuple[int, int | None]] = []
    client = _client(
        server,
        model_id,
        resumable_from=1 << 20,
        upload_chunk_size=CHUNK,
        progress=lambda done, total: seen.append((done, total)),
    )
    rng = np.random.default_rng(7)
    weights = {f"layer{i}": rng.standard_normal(1 << 18).astype(np.float32) for i in range(8)}
    first = client.send_update(weights)
    size = seen[-1][1]
    assert size is not None and seen[-1] == (size, size) and seen[0][0] == 0
    assert all(b[0] >= a[0] for a, b in itertools.pairwise(seen))  # never back
    got = MsgpackCodec().decode(bytearray(_stored(server, client, first)))
    assert all(np.array_equal(dict(got)[k], v) for k, v in weights.items())
    # One of eight equal tensors changed: only its chunks (and the header's) travel.
    weights["layer5"] = weights["layer5"] + 1
    seen.clear()
    second = client.send_update(weights)
    assert second["id"] != first["id"]
    resent = size - seen[0][0]
    assert resent <= 0.2 * size, resent / size
    got = MsgpackCodec().decode(bytearray(_stored(server, client, second)))
    assert np.array_equal(dict(got)["layer5"], weights["layer5"])


@pytest.mark.local_blobs("it sees that no upload was opened by the local part files")
def test_small_updates_and_the_stock_service_keep_the_single_request(
    server: RunningServer, model_id: int, data_dir: Path
) -> None:
    client = _client(server, model_id, resumable_from=1 << 30)
    client.send_update({"w": np.zeros(1000, np.float32)})
    assert not any((data_dir / "uploads").iterdir())
    json_client = _client(server, model_id, resumable_from=1)
    json_client.send_update({"w": np.zeros(1000, np.float32)})  # JSON-native: never chunked
    assert not any((data_dir / "uploads").iterdir())


@pytest.mark.local_blobs(
    "it watches the upload's local part file (test_s3_server checks the chunks in S3)"
)
def test_expired_uploads_are_refused_and_deleted(data_dir: Path) -> None:
    from fma_connect.server.testing import running_server

    with running_server(data_dir, upload_expiry=0.5) as server:
        admin = AdminClient(server.url, server.admin_token, retries=0)
        model = admin.create_model("expiry", requirement="require_x_updates", requirement_args=[9])
        client = _client(server, model["id"])
        body = _payload(8)
        protocol = Upload(server, client.uuid)
        upload = protocol.open(_manifest(model["id"], body)).json()["id"]
        assert (data_dir / "uploads" / f"{upload}.part").exists()
        time.sleep(0.6)
        answer = protocol.put(upload, 0, _chunks(body)[0])
        assert answer.status_code == 404 and "expired" in answer.json()["detail"]
        assert not (data_dir / "uploads" / f"{upload}.part").exists()


def test_a_clients_open_uploads_count_against_its_quota(data_dir: Path) -> None:
    from fma_connect.server.testing import running_server

    body = _payload(9)
    with running_server(data_dir, upload_quota=2 * len(body)) as server:
        admin = AdminClient(server.url, server.admin_token, retries=0)
        models = [
            admin.create_model(f"q{i}", requirement="require_x_updates", requirement_args=[9])
            for i in range(3)
        ]
        client = _client(server, models[0]["id"])
        for model in models[1:]:
            WebClient(model["id"], uuid=client.uuid, url=server.url).register()
        protocol = Upload(server, client.uuid)
        ids = [protocol.open(_manifest(m["id"], body)).json()["id"] for m in models[:2]]
        refused = protocol.open(_manifest(models[2]["id"], body))
        assert refused.status_code == 409 and "quota" in refused.json()["detail"]
        assert sorted(refused.json()["uploads"]) == sorted(ids)
        # A new update for a model supersedes the client's older upload for it.
        newer = protocol.open(_manifest(models[0]["id"], _payload(10)))
        assert newer.status_code == 201
        assert protocol.get(ids[0]).status_code == 404 and protocol.get(ids[1]).status_code == 200


@pytest.mark.local_blobs(
    "it watches the upload's local part file (test_s3_server checks the chunks in S3)"
)
def test_deleting_a_model_deletes_its_uploads(
    server: RunningServer, model_id: int, admin: AdminClient, data_dir: Path
) -> None:
    client = _client(server, model_id)
    protocol = Upload(server, client.uuid)
    upload = protocol.open(_manifest(model_id, _payload(12))).json()["id"]
    assert (data_dir / "uploads" / f"{upload}.part").exists()
    admin.delete_model(model_id)
    assert not any((data_dir / "uploads").iterdir())
    assert protocol.get(upload).status_code == 404
