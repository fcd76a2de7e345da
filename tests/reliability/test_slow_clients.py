"""Slow, stalled, numerous and malformed clients: the reference server's bounds hold.

Each test runs a real server on 127.0.0.1 with small bounds (fractions of a second,
a few connections) so it stays fast. No test asserts a wall-clock time: a socket that
stays open past its bound shows as the raw socket's own 10 s timeout failing the test.
"""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import requests
from raw_http import connect, head, json_error, read_response, read_until_closed
from reliability_figures import Figures
from reliability_support import check_data_dir, wait_for

from fma_connect import WebClient
from fma_connect.admin import AdminClient
from fma_connect.codecs.msgpack_numpy import MsgpackCodec
from fma_connect.server.limits import JSON_BODY_BYTES
from fma_connect.server.testing import RunningServer, running_server, running_server_process

UPDATES = "/api/v1/model_updates/"
SCORES = "/api/v1/client_aggregate_scores/"
#: The test servers' timeouts: small, so the tests are quick; far above loopback latency
#: (and above the pauses of a loaded machine, where the client shares it with the server).
TIMEOUT = 1.0


@pytest.fixture
def bounded(data_dir: Path) -> Iterator[RunningServer]:
    """A server with one-second timeouts, and caps well above what the tests open."""
    with running_server(data_dir, header_timeout=TIMEOUT, idle_timeout=TIMEOUT) as running:
        yield running


def _model(server: RunningServer, **fields: Any) -> tuple[int, str]:
    """Create a model; return its id and a registered client's UUID."""
    with AdminClient(server.url, server.admin_token, retries=0) as admin:
        model = admin.create_model("bounds", **fields)
    return int(model["id"]), WebClient(model["id"], url=server.url).uuid


def _upload_head(model_id: int, uuid: str, length: int, kind: str) -> bytes:
    if kind == "json":
        return head(
            "POST",
            UPDATES,
            {
                "CLIENT-UUID": uuid,
                "Content-Type": "application/json",
                "Content-Length": str(length),
            },
        )
    path = f"{UPDATES}?federated_model={model_id}"
    headers = {"CLIENT-UUID": uuid, "Content-Type": MsgpackCodec.media_type}
    return head("POST", path, {**headers, "Content-Length": str(length)})


# -- route caps -------------------------------------------------------------------------


def test_a_score_body_over_its_route_cap_gets_413_naming_the_cap(
    server: RunningServer, data_dir: Path, figures: Figures
) -> None:
    # The server's max_body_bytes is its default (16 GiB): the cap is the route's own.
    _, uuid = _model(server)
    headers = {"CLIENT-UUID": uuid, "Content-Type": "application/json"}
    declared = 2 * JSON_BODY_BYTES
    with connect(server.url) as sock:  # refused from Content-Length, no body byte sent
        sock.sendall(head("POST", SCORES, {**headers, "Content-Length": str(declared)}))
        detail = json_error(sock, 413)
    assert f"({JSON_BODY_BYTES} bytes)" in detail and f"{declared} bytes" in detail, detail
    assert SCORES in detail

    piece = b"7" * (64 << 10)
    sent = 0
    with connect(server.url) as sock:  # chunked: refused while it streams
        sock.sendall(head("POST", SCORES, {**headers, "Transfer-Encoding": "chunked"}))
        while sent < 4 * declared and not select.select([sock], [], [], 0.05)[0]:
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            except OSError:  # the server answered and stopped reading
                break
            sent += len(piece)
        detail = json_error(sock, 413)
    assert sent < 4 * declared, "the server answered only after the whole body"
    assert f"({JSON_BODY_BYTES} bytes)" in detail and "arrived" in detail, detail

    # Creating a model takes more: its initial model travels in the JSON body.
    initial = [np.arange(300_000, dtype=np.float32)]  # ~2.6 MB of JSON
    with AdminClient(server.url, server.admin_token, retries=0) as admin:
        assert admin.create_model("big initial", initial_model=initial)["id"]
    check_data_dir(data_dir)
    figures.add("slow clients", "route caps: oversized score bodies refused 413", 2)


# -- stalled requests -------------------------------------------------------------------


def test_a_stalled_request_head_is_closed_after_the_header_timeout(
    bounded: RunningServer, figures: Figures
) -> None:
    with connect(bounded.url) as sock:  # half a head: told why, then closed
        sock.sendall(b"GET /api/v1/models/ HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        detail = json_error(sock, 408)
        assert f"within {TIMEOUT:g} s" in detail
        assert read_until_closed(sock) == b""
    with connect(bounded.url) as sock:  # nothing at all: closed without a word
        assert read_until_closed(sock) == b""
    with connect(bounded.url) as sock:  # a keep-alive connection, then a head too slow
        sock.sendall(head("GET", "/api/v1/models/"))
        assert read_response(sock)[0] == 401
        sock.sendall(b"GET /api/v1/mod")
        assert json_error(sock, 408)
    figures.add("slow clients", "stalled request heads closed", 3)


@pytest.mark.parametrize("kind", ["msgpack", "json"])
def test_a_stalled_upload_gets_408_and_its_spool_file_is_removed(
    bounded: RunningServer, data_dir: Path, figures: Figures, kind: str
) -> None:
    model_id, uuid = _model(bounded)
    with connect(bounded.url) as sock:
        sock.sendall(_upload_head(model_id, uuid, 10 << 20, kind))
        sock.sendall(b"[" * (100 << 10) if kind == "json" else b"x" * (100 << 10))
        wait_for(
            lambda: any(p.name.startswith(".tmp-") for p in (data_dir / "blobs").iterdir()),
            "the upload's spool file",
        )
        detail = json_error(sock, 408)
        assert f"for {TIMEOUT:g} s" in detail and f"({100 << 10} bytes" in detail, detail
        assert read_until_closed(sock) == b""
    check_data_dir(data_dir)  # the spool file is gone
    figures.add("slow clients", "stalled uploads answered 408, spool removed", 1)


# -- connection caps --------------------------------------------------------------------


def _refused(url: str, source: str | None = None) -> str:
    with connect(url, source=source) as sock:
        sock.sendall(head("GET", "/api/v1/models/"))
        status, headers, body = read_response(sock)
        assert status == 503, (status, body)
        assert headers["content-type"] == "application/json"
        assert headers["retry-after"].isdigit()
        assert read_until_closed(sock) == b""
        detail: str = json.loads(body)["detail"]
        return detail


def _served(url: str, source: str | None = None) -> int:
    with connect(url, source=source) as sock:
        sock.sendall(head("GET", "/api/v1/models/", {"Connection": "close"}))
        return read_response(sock)[0]


def test_the_connection_cap_refuses_connections_past_it_until_idle_ones_close(
    data_dir: Path, figures: Figures
) -> None:
    cap = 4
    with running_server(data_dir, max_connections=cap, max_connections_per_client=0) as server:
        idle = [connect(server.url) for _ in range(cap)]
        try:
            assert "the server holds 4 connections" in _refused(server.url)
        finally:
            for sock in idle:
                sock.close()
        wait_for(lambda: _served(server.url) == 401, "a connection once the idle ones closed")
    figures.add("slow clients", "connections refused past the cap (503)", 1)


def test_the_per_client_cap_refuses_one_address_and_serves_another(
    data_dir: Path, figures: Figures
) -> None:
    with running_server(data_dir, max_connections=16, max_connections_per_client=2) as server:
        idle = [connect(server.url) for _ in range(2)]
        try:
            assert "127.0.0.1 holds 2 connections" in _refused(server.url)
            assert _served(server.url, source="127.0.0.2") == 401
        finally:
            for sock in idle:
                sock.close()
        wait_for(lambda: _served(server.url) == 401, "a connection once the idle ones closed")
    figures.add("slow clients", "connections refused past the per-client cap (503)", 1)


# -- slow and stalled readers -----------------------------------------------------------


def _stored_update(server: RunningServer, values: np.ndarray) -> tuple[int, str]:
    """Store ``values`` as a msgpack update; return its id and its client's UUID."""
    model_id, uuid = _model(server, allow_aggregation=False)
    client = WebClient(model_id, uuid=uuid, url=server.url, codec="msgpack", retries=0)
    return int(client.send_update([values])["id"]), uuid


def _rss_anon(pid: int) -> int:
    """The anonymous resident memory of a process in bytes (its heap, not mapped files)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) << 10
    raise AssertionError("no RssAnon in /proc/<pid>/status")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_a_slow_reader_of_a_large_download_does_not_grow_the_server_memory(
    tmp_path: Path, figures: Figures
) -> None:
    # Stored in msgpack, asked for as plain JSON lists: the server converts it.
    values = np.random.default_rng(7).standard_normal(4_000_000).astype(np.float32)
    with running_server_process(tmp_path / "data", args=("--log-level", "warning")) as server:
        running = RunningServer(server.url, server.admin_token)
        update_id, uuid = _stored_update(running, values)
        path = f"{UPDATES}{update_id}/data/"
        assert _served(server.url) == 401  # warm: the worker threads exist
        before = _rss_anon(server.process.pid)
        with connect(server.url, receive_buffer=64 << 10) as sock:
            sock.sendall(head("GET", path, {"CLIENT-UUID": uuid, "Accept": "application/json"}))
            first = sock.recv(65536)  # the answer has started: the server holds what it holds
            assert first.startswith(b"HTTP/1.1 200")
            grown = 0
            for _ in range(10):  # the reader pauses: what the server buffers for it stays put
                time.sleep(0.1)
                grown = max(grown, _rss_anon(server.process.pid) - before)
            body = first + read_until_closed(sock)  # then reads it all
    text = body.partition(b"\r\n\r\n")[2]
    np.testing.assert_array_equal(np.asarray(orjson.loads(text)[0], np.float32), values)
    assert grown < len(text) // 4, f"the server grew by {grown} bytes for {len(text)} of JSON"
    figures.set("slow clients", "server memory held for a paused reader (MB)", grown >> 20)
    figures.set("slow clients", "its converted JSON download (MB)", len(text) >> 20)


def test_a_reader_that_stops_is_cut_off_and_a_slow_one_is_served_whole(
    bounded: RunningServer, caplog: pytest.LogCaptureFixture, figures: Figures
) -> None:
    caplog.set_level("INFO", logger="fma_connect.server")
    values = np.arange(4_000_000, dtype=np.float32)  # 16 MB: more than the kernel buffers
    update_id, uuid = _stored_update(bounded, values)
    ask = head(
        "GET",
        f"{UPDATES}{update_id}/data/",
        {"CLIENT-UUID": uuid, "Accept": MsgpackCodec.media_type},
    )
    with connect(bounded.url, receive_buffer=64 << 10) as sock:
        sock.sendall(ask)
        wait_for(
            lambda: any("read none of the response" in r.getMessage() for r in caplog.records),
            "the stalled download to be aborted",
            timeout=10,
        )
        cut = read_until_closed(sock)  # what the kernels held when the server let go
    assert 0 < len(cut) < values.nbytes

    with connect(bounded.url, receive_buffer=64 << 10) as sock:  # slow but moving
        sock.sendall(ask)
        # Silent for half the idle timeout before each 4 MiB: in all, longer than it.
        body = _slow_read(sock, pause=TIMEOUT / 2, burst=4 << 20)
    ((_, received),) = MsgpackCodec().decode(body)
    np.testing.assert_array_equal(received, values)
    figures.add("slow clients", "stalled downloads aborted", 1)
    figures.add("slow clients", "slow downloads served whole", 1)


def _slow_read(sock: socket.socket, *, pause: float, burst: int) -> bytes:
    """Read a response's body, pausing ``pause`` seconds before each ``burst`` bytes."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    raw_head, _, body = data.partition(b"\r\n\r\n")
    assert raw_head.startswith(b"HTTP/1.1 200"), raw_head
    length = next(
        int(line.partition(b":")[2])
        for line in raw_head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    received = bytearray(body)
    while len(received) < length:
        time.sleep(pause)
        goal = min(length, len(received) + burst)
        while len(received) < goal:
            chunk = sock.recv(goal - len(received))
            assert chunk, (
                f"the server cut a slow reader off after {len(received)} of {length} bytes"
            )
            received += chunk
    return bytes(received)


# -- malformed HTTP ---------------------------------------------------------------------


MALFORMED = {
    "a request line that is not one": (b"GARBAGE\r\n\r\n", 400),
    "a header line without a colon": (b"GET / HTTP/1.1\r\nHost: x\r\nno colon\r\n\r\n", 400),
    "a Content-Length that is not a number": (
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: ten\r\n\r\n",
        400,
    ),
    "a head larger than the server accepts": (
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (20 << 10) + b"\r\n\r\n",
        431,
    ),
    "an unsupported Transfer-Encoding": (
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
        501,
    ),
}


@pytest.mark.parametrize("what", sorted(MALFORMED))
def test_malformed_http_is_answered_in_json(
    server: RunningServer, figures: Figures, what: str
) -> None:
    request, status = MALFORMED[what]
    with connect(server.url) as sock:
        sock.sendall(request)
        detail = json_error(sock, status)
    if status == 431:
        assert "(16384 bytes)" in detail
    figures.add("slow clients", "malformed requests answered in JSON", 1)


def test_a_head_too_large_sent_slowly_is_answered_431(server: RunningServer) -> None:
    with connect(server.url) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ")
        for _ in range(20):
            try:
                sock.sendall(b"a" * 1024)
            except OSError:
                break
        assert "(16384 bytes)" in json_error(sock, 431)


# -- a client leaving mid-upload, and the command line ----------------------------------


def test_a_client_leaving_mid_upload_is_one_info_line_and_no_file(
    tmp_path: Path, figures: Figures
) -> None:
    data_dir = tmp_path / "data"
    args = ("--idle-timeout", "30", "--max-connections", "8", "--header-timeout", "5")
    with running_server_process(data_dir, args=args) as server:
        running = RunningServer(server.url, server.admin_token)
        model_id, uuid = _model(running)
        with connect(server.url) as sock:
            sock.sendall(_upload_head(model_id, uuid, 10 << 20, "msgpack"))
            sock.sendall(b"x" * (1 << 20))
            wait_for(
                lambda: any(p.name.startswith(".tmp-") for p in (data_dir / "blobs").iterdir()),
                "the upload's spool file",
            )
        wait_for(lambda: any("disconnected after" in line for line in server.output), "the log")
        assert _served(server.url) == 401  # still serving
        check_data_dir(data_dir)
        output = list(server.output)
    (line,) = [line for line in output if "disconnected after" in line]
    assert line.startswith("INFO") and f"POST {UPDATES}" in line and uuid in line, line
    assert "bytes of its body" in line
    assert not [line for line in output if "ERROR" in line or "Traceback" in line], output
    figures.add("slow clients", "mid-upload disconnects logged as one INFO line", 1)


def test_serve_takes_the_bounds_from_its_command_line(tmp_path: Path) -> None:
    args = (
        "--header-timeout", "0.5", "--idle-timeout", "2", "--max-connections", "2",
        "--max-connections-per-client", "0", "--max-header-bytes", "2048",
    )  # fmt: skip
    with running_server_process(tmp_path / "data", args=args) as server:
        with connect(server.url) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\n")
            assert "within 0.5 s" in json_error(sock, 408)
        with connect(server.url) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 4096 + b"\r\n\r\n")
            assert "(2048 bytes)" in json_error(sock, 431)
        # Two uploads in progress hold both connections (the head timeout is over for them).
        headers = {
            "Authorization": f"Token {server.admin_token}",
            "Content-Type": "application/json",
            "Content-Length": "100",
        }
        busy = [connect(server.url) for _ in range(2)]
        try:
            for sock in busy:
                sock.sendall(head("POST", "/api/v1/models/", headers) + b'{"na')
            assert "the server holds 2 connections" in _refused(server.url)
            for sock in busy:  # and they stall: the idle timeout is the command line's
                assert "for 2 s" in json_error(sock, 408)
        finally:
            for sock in busy:
                sock.close()
        wait_for(lambda: _served(server.url) == 401, "a connection once the busy ones closed")
        response = requests.get(server.url + "/api/v1/models/", timeout=10)
        assert response.status_code == 401


@pytest.mark.parametrize(
    ("option", "value"),
    [("--idle-timeout", "0"), ("--header-timeout", "-1"), ("--max-connections", "0")],
)
def test_bad_bounds_are_usage_errors(
    capsys: pytest.CaptureFixture[str], option: str, value: str
) -> None:
    from fma_connect.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["serve", option, value])
    assert exit_.value.code == 2
    assert f"argument {option}:" in capsys.readouterr().err
