"""Limits of the reference server: body size (413), tensor count, update_schema, nesting.

The body limit is checked from Content-Length before any of the body is read (the
tests never send it), and while a chunked body streams in (the answer comes before the
body ends). Nothing refused is stored, and no temporary file is left behind.
"""

from __future__ import annotations

import base64
import io
import json
import select
import socket
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgpack
import numpy as np
import orjson
import pytest
import requests
from raw_http import read_response
from reliability_figures import Figures
from reliability_support import check_data_dir

from fma_connect import APIError, WebClient
from fma_connect.admin import AdminClient
from fma_connect.codecs.msgpack_numpy import MsgpackCodec
from fma_connect.server.testing import RunningServer, running_server, running_server_process

LIMIT = 256 << 10
MAX_TENSORS = 8
UPDATES = "/api/v1/model_updates/"


@pytest.fixture
def limited(data_dir: Path) -> Iterator[RunningServer]:
    with running_server(data_dir, max_body_bytes=LIMIT, max_tensors=MAX_TENSORS) as running:
        yield running


@pytest.fixture
def setup(limited: RunningServer) -> Iterator[tuple[AdminClient, int, str]]:
    with AdminClient(limited.url, limited.admin_token, retries=0) as admin:
        model = admin.create_model("limits", requirement="require_x_updates", requirement_args=[9])
        client = WebClient(model["id"], url=limited.url, retries=0)
        yield admin, int(model["id"]), client.uuid


def _connect(server: RunningServer) -> socket.socket:
    parts = urlsplit(server.url)
    assert parts.hostname == "127.0.0.1" and parts.port is not None
    return socket.create_connection((parts.hostname, parts.port), timeout=30)


def _head(method: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return "\r\n".join([*lines, "", ""]).encode()


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], Any]:
    status, headers, body = read_response(sock)
    return status, headers, json.loads(body)


def _routes_with_bodies(model_id: int, uuid: str, token: str) -> list[tuple[str, dict[str, str]]]:
    client = {"CLIENT-UUID": uuid}
    admin = {"Authorization": f"Token {token}"}
    json_type = {"Content-Type": "application/json"}
    return [
        (UPDATES, {**client, **json_type}),
        (
            f"{UPDATES}?federated_model={model_id}",
            {**client, "Content-Type": MsgpackCodec.media_type},
        ),
        ("/api/v1/client_aggregate_scores/", {**client, **json_type}),
        ("/api/v1/models/", {**admin, **json_type}),
    ]


def test_a_declared_length_over_the_limit_gets_413_before_the_body_is_sent(
    limited: RunningServer, setup: tuple[AdminClient, int, str], data_dir: Path, figures: Figures
) -> None:
    admin, model_id, uuid = setup
    for path, headers in _routes_with_bodies(model_id, uuid, limited.admin_token):
        with _connect(limited) as sock:
            sock.sendall(_head("POST", path, {**headers, "Content-Length": str(10**12)}))
            status, response_headers, body = _read_response(sock)  # no body byte was sent
        assert status == 413, (path, body)
        assert response_headers["content-type"] == "application/json"
        assert f"({LIMIT} bytes)" in body["detail"]
    assert admin.list_updates(model_id) == []
    check_data_dir(data_dir)
    figures.add("limits", "413 from Content-Length, body never sent", 4)


def test_a_chunked_body_over_the_limit_gets_413_while_it_streams(
    limited: RunningServer, setup: tuple[AdminClient, int, str], data_dir: Path, figures: Figures
) -> None:
    admin, model_id, uuid = setup
    total = 16 * LIMIT
    piece = b"7" * (16 << 10)
    for path, headers in _routes_with_bodies(model_id, uuid, limited.admin_token):
        with _connect(limited) as sock:
            sock.sendall(_head("POST", path, {**headers, "Transfer-Encoding": "chunked"}))
            sent = 0
            while sent < total and not select.select([sock], [], [], 0.05)[0]:
                try:
                    sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
                except OSError:  # the server answered and stopped reading: read its answer
                    break
                sent += len(piece)
            status, _, body = _read_response(sock)
        assert status == 413, (path, body)
        assert sent < total, "the server answered only after the whole body"
    assert admin.list_updates(model_id) == []
    check_data_dir(data_dir)  # the spooled part was deleted
    figures.add("limits", "413 while a chunked body streamed", 4)


def test_a_client_sending_too_much_is_told_413(
    limited: RunningServer, setup: tuple[AdminClient, int, str]
) -> None:
    admin, model_id, uuid = setup
    big = [np.zeros(LIMIT // 4, np.float32)]  # a little over the limit in any codec
    for codec in ("msgpack", "json"):
        client = WebClient(model_id, uuid=uuid, url=limited.url, codec=codec, retries=0)
        with pytest.raises(APIError) as refused:
            client.send_update(big)
        assert refused.value.status_code == 413
        assert "larger than this server accepts" in refused.value.detail["detail"]
    assert admin.list_updates(model_id) == []


@pytest.mark.parametrize("codec", ["json", "msgpack", "npz-b64"])
def test_more_tensors_than_the_limit_are_refused(
    limited: RunningServer, setup: tuple[AdminClient, int, str], figures: Figures, codec: str
) -> None:
    admin, model_id, uuid = setup
    client = WebClient(model_id, uuid=uuid, url=limited.url, codec=codec, retries=0)
    with pytest.raises(APIError) as refused:
        client.send_update([np.ones(2)] * (MAX_TENSORS + 1))
    assert refused.value.status_code == 400
    assert refused.value.detail["data"] == [TOO_MANY]
    assert client.send_update([np.ones(2)] * MAX_TENSORS)["status"] == 0
    with pytest.raises(APIError) as initial:
        admin.create_model("too-many", initial_model=[np.ones(2)] * (MAX_TENSORS + 1))
    assert "initial_model" in initial.value.detail
    figures.add("limits", f"updates over max_tensors refused ({codec})", 1)


TOO_MANY = (
    f"The weights hold {MAX_TENSORS + 1} tensors; this server accepts at most {MAX_TENSORS} "
    "(fma-connect serve --max-tensors)."
)


def _msgpack_header_only(count: int) -> bytes:
    """A msgpack body whose header lists ``count`` tensors, without any tensor's bytes."""
    codec = MsgpackCodec()
    body = b"".join(
        bytes(memoryview(c).cast("B"))
        for c in codec.encode([(str(i), np.ones(2)) for i in range(count)])
    )
    header = msgpack.Unpacker()
    header.feed(body)
    header.skip()
    return body[: -(-(header.tell() + 4) // 64) * 64]  # header, checksum, padding


def _npz_of_junk(count: int) -> dict[str, Any]:
    """An npz-b64 object whose manifest lists ``count`` tensors, stored as junk entries."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        manifest = orjson.dumps(
            {"names": [str(i) for i in range(count)], "dtypes": ["int8"] * count}
        )
        with archive.open("manifest.npy", "w") as file:
            np.lib.format.write_array(file, np.frombuffer(manifest, np.uint8))
        for i in range(count):
            archive.writestr(f"t{i}.npy", b"not an array")
    return {
        "codec": "npz-b64",
        "format_version": 1,
        "payload": base64.b64encode(buffer.getvalue()).decode(),
    }


def test_the_tensor_count_is_refused_before_any_tensor_is_read(
    limited: RunningServer, setup: tuple[AdminClient, int, str], data_dir: Path, figures: Figures
) -> None:
    # Bodies whose tensors are missing or unreadable: answered with the count, not with
    # a decode error, so the count came first (from the header, the archive directory,
    # the list of layers), before any tensor was built.
    admin, model_id, uuid = setup
    client_headers = {"CLIENT-UUID": uuid}
    binary = requests.post(
        f"{limited.url}{UPDATES}?federated_model={model_id}",
        data=_msgpack_header_only(MAX_TENSORS + 1),
        headers={**client_headers, "Content-Type": MsgpackCodec.media_type},
        timeout=30,
    )
    assert (binary.status_code, binary.json()) == (400, {"data": [TOO_MANY]})
    for data in (_npz_of_junk(MAX_TENSORS + 1), [["x"]] * (MAX_TENSORS + 1)):
        answer = requests.post(
            limited.url + UPDATES,
            json={"federated_model": model_id, "data": data},
            headers=client_headers,
            timeout=30,
        )
        assert (answer.status_code, answer.json()) == (400, {"data": [TOO_MANY]})
    initial = requests.post(
        limited.url + "/api/v1/models/",
        json={"name": "junk", "developer": 1, "initial_model": _npz_of_junk(MAX_TENSORS + 1)},
        headers={"Authorization": f"Token {limited.admin_token}"},
        timeout=30,
    )
    assert (initial.status_code, initial.json()) == (400, {"initial_model": [TOO_MANY]})
    # One tensor fewer: the same bodies are decoded, and refused as what they are.
    binary = requests.post(
        f"{limited.url}{UPDATES}?federated_model={model_id}",
        data=_msgpack_header_only(MAX_TENSORS),
        headers={**client_headers, "Content-Type": MsgpackCodec.media_type},
        timeout=30,
    )
    assert binary.status_code == 400 and "truncated" in binary.json()["data"][0]
    answer = requests.post(
        limited.url + UPDATES,
        json={"federated_model": model_id, "data": _npz_of_junk(MAX_TENSORS)},
        headers=client_headers,
        timeout=30,
    )
    assert answer.status_code == 400 and "corrupt" in answer.json()["data"][0]
    assert admin.list_updates(model_id) == []
    check_data_dir(data_dir)
    figures.add("limits", "tensor counts refused before decoding (msgpack, npz-b64, json)", 4)


SCHEMA = {
    "type": "array",
    "maxItems": 2,
    "items": {"type": "array", "items": {"type": "number", "minimum": -10, "maximum": 10}},
}


@pytest.mark.parametrize("codec", ["json", "msgpack", "npz-b64"])
def test_update_schema_is_enforced_in_every_codec(
    server: RunningServer, admin: AdminClient, figures: Figures, codec: str
) -> None:
    model = admin.create_model("schema", update_schema=SCHEMA, allow_aggregation=False)
    assert admin.get_model(model["id"])["update_schema"] == SCHEMA
    client = WebClient(model["id"], url=server.url, codec=codec, retries=0)
    good = [np.arange(3, dtype=np.float32), np.zeros(2, np.float32)]
    cases = {
        "three layers": [*good, np.zeros(1, np.float32)],
        "a value over 10": [np.array([1.0, 11.0], np.float32), np.zeros(2, np.float32)],
        "a 2-d layer": [np.zeros((2, 2), np.float32)],
    }
    for what, weights in cases.items():
        with pytest.raises(APIError) as refused:
            client.send_update(weights)
        assert refused.value.status_code == 400, what
        assert "schema" in refused.value.detail["data"][0], what
    assert client.send_update(good)["status"] == 0
    if codec != "json":  # JSON has no form for complex numbers: the schema cannot pass them
        with pytest.raises(APIError, match="cannot be checked"):
            client.send_update([np.array([1 + 1j], np.complex64)])
    assert len(admin.list_updates(model["id"])) == 1
    figures.add("limits", f"update_schema violations refused ({codec})", len(cases))


def test_absurdly_nested_json_is_refused(
    server: RunningServer, admin: AdminClient, figures: Figures
) -> None:
    model = admin.create_model("nesting")
    uuid = WebClient(model["id"], url=server.url).uuid
    headers = {"CLIENT-UUID": uuid, "Content-Type": "application/json"}
    for depth in (70, 1000, 100_000):
        data = b"[" * depth + b"1" + b"]" * depth
        body = b'{"federated_model": %d, "data": [%s]}' % (model["id"], data)
        response = requests.post(server.url + UPDATES, data=body, headers=headers, timeout=30)
        assert response.status_code == 400, depth
        assert response.headers["content-type"] == "application/json"
    assert admin.list_updates(model["id"]) == []
    figures.add("limits", "absurdly nested JSON updates refused", 3)


def test_serve_takes_the_limits_from_its_command_line(tmp_path: Path) -> None:
    args = ("--log-level", "warning", "--max-body-bytes", "4096", "--max-tensors", "2")
    with running_server_process(tmp_path / "data", args=args) as server:
        admin = AdminClient(server.url, server.admin_token, retries=0)
        model = admin.create_model("cli")
        client = WebClient(model["id"], url=server.url, codec="msgpack", retries=0)
        with pytest.raises(APIError) as too_many:
            client.send_update([np.ones(1)] * 3)
        assert too_many.value.status_code == 400
        with pytest.raises(APIError) as too_big:
            client.send_update([np.ones(1024)])
        assert too_big.value.status_code == 413
        assert "(4096 bytes)" in too_big.value.detail["detail"]
