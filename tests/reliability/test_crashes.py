"""The server process killed with SIGKILL at the worst moments, then restarted.

Each test runs ``fma-connect serve`` as a child process, kills it mid-upload (a slow
streaming upload, half sent) or at a pause point (``FMA_CONNECT_TEST_PAUSE``: inside
a round, or between a blob reaching the disk and its row), restarts it on the same data
directory and checks: every acknowledged update is there with its bytes, nothing
partial is (no temporary file, no blob without its row, no row without its blob, no
aggregate), and the next round aggregates correctly.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest
import requests
from reliability_figures import Figures
from reliability_support import (
    PENDING,
    as_received,
    assert_tree_equal,
    check_data_dir,
    leftovers,
    make_tree,
    reference_mean,
    wait_for,
)

from fma_connect import FMAConnectError, WebClient
from fma_connect.admin import AdminClient
from fma_connect.codecs.msgpack_numpy import MsgpackCodec
from fma_connect.server.limits import PAUSE_ENV
from fma_connect.server.testing import ServerProcess, running_server_process

TOKEN = "reliability-crash-token"
QUIET = ("--log-level", "warning")


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path / "data"


def _serve(data: Path, *args: str) -> Any:
    return running_server_process(data, admin_token=TOKEN, args=(*QUIET, *args))


def _temporary_files(data: Path) -> list[Path]:
    return [p for p in (data / "blobs").iterdir() if p.name.startswith(".tmp-")]


class _SlowUpload:
    """A POST whose body is sent halfway, then nothing more: the server waits for it."""

    def __init__(self, server: ServerProcess, path: str, headers: dict[str, str], body: bytes):
        parts = urlsplit(server.url)
        assert parts.hostname == "127.0.0.1" and parts.port is not None
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
        lines = [f"POST {path} HTTP/1.1", f"Host: {parts.netloc}", f"Content-Length: {len(body)}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        self.sock.sendall(("\r\n".join([*lines, "", ""])).encode() + body[: len(body) // 2])

    def close(self) -> None:
        self.sock.close()


def _stored_updates(admin: AdminClient, model_id: int) -> dict[int, dict[str, Any]]:
    return {u["id"]: u for u in admin.list_updates(model_id)}


def _download(server: ServerProcess, update: dict[str, Any], client: WebClient) -> Any:
    response = requests.get(
        server.url + update["data"],
        headers={"CLIENT-UUID": client.uuid, "Accept": MsgpackCodec.media_type},
        timeout=30,
    )
    assert response.status_code == 200
    return dict(MsgpackCodec().decode(response.content))


def test_killed_mid_upload_keeps_every_acknowledged_update(data: Path, figures: Figures) -> None:
    big = {"w": np.random.default_rng(7).standard_normal(1 << 19).astype(np.float32)}
    with _serve(data) as server:
        admin = AdminClient(server.url, TOKEN, retries=0)
        model = admin.create_model("crash", requirement="require_x_updates", requirement_args=[99])
        client = WebClient(model["id"], url=server.url, codec="msgpack", retries=0)
        sent = {client.send_update(make_tree(i))["id"]: make_tree(i) for i in range(3)}
        # Two uploads in flight, one binary and one JSON, each half sent.
        body = b"".join(bytes(c) for c in MsgpackCodec().encode(list(big.items())))
        binary = _SlowUpload(
            server,
            f"/api/v1/model_updates/?federated_model={model['id']}",
            {"CLIENT-UUID": client.uuid, "Content-Type": MsgpackCodec.media_type},
            body,
        )
        text = b'{"federated_model": %d, "data": [%s]}' % (
            model["id"],
            b",".join(b"1.5" for _ in range(1 << 18)),
        )
        plain = _SlowUpload(
            server,
            "/api/v1/model_updates/",
            {"CLIENT-UUID": client.uuid, "Content-Type": "application/json"},
            text,
        )
        # Both bodies are being spooled to temporary files when the server dies.
        wait_for(
            lambda: sum(p.stat().st_size > 0 for p in _temporary_files(data)) == 2,
            "two uploads being spooled",
        )
        server.kill()
        binary.close()
        plain.close()
    assert leftovers(data)["temporary"] == 2
    with _serve(data) as server:
        counts = check_data_dir(data)
        assert counts["updates"] == 3 and counts["aggregates"] == 0
        admin = AdminClient(server.url, TOKEN, retries=0)
        stored = _stored_updates(admin, model["id"])
        assert sorted(stored) == sorted(sent)
        assert {u["status"] for u in stored.values()} == {PENDING}
        for update_id, tree in sent.items():
            got = _download(server, stored[update_id], client)
            assert_tree_equal({name: got[name] for name in tree}, list(tree.values()))
        # The next round takes the three and a fresh one.
        again = WebClient(model["id"], uuid=client.uuid, url=server.url, codec="msgpack")
        sent[again.send_update(make_tree(3))["id"]] = make_tree(3)
        admin.aggregate(model["id"])
        latest = again.check_for_latest_model(like=make_tree(0))
        assert latest is not None
        expected = reference_mean(
            [as_received(sent[i], "msgpack") for i in sorted(sent)], make_tree(0)
        )
        assert_tree_equal(latest["values"], expected)
    figures.add("faults", "SIGKILL mid-upload (2 uploads in flight), survived", 1)
    figures.add("faults", "acknowledged updates checked after a SIGKILL", 3)


@pytest.fixture
def paused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Any]:
    """Set the pause point of the next server started; yields a function taking the point."""
    marker = tmp_path / "paused"

    def at(point: str) -> Path:
        monkeypatch.setenv(PAUSE_ENV, f"{point}:{marker}")
        return marker

    yield at
    monkeypatch.delenv(PAUSE_ENV, raising=False)


def _in_thread(call: Any) -> threading.Thread:
    def run() -> None:
        with contextlib.suppress(FMAConnectError):  # the server died under it, as intended
            call()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("point", ["round-running", "round-stored"])
def test_killed_mid_round_leaves_no_aggregate_and_the_next_round_is_right(
    data: Path,
    paused: Any,
    monkeypatch: pytest.MonkeyPatch,
    figures: Figures,
    point: str,
) -> None:
    marker = paused(point)
    codecs = ["msgpack", "npz-b64", "json", "msgpack"]
    with _serve(data, "--auto-aggregate", "off") as server:
        admin = AdminClient(server.url, TOKEN, retries=0)
        model = admin.create_model("round")
        sent: dict[int, tuple[dict[str, Any], str]] = {}
        for i, codec in enumerate(codecs):
            client = WebClient(model["id"], url=server.url, codec=codec, retries=0)
            sent[client.send_update(make_tree(10 + i))["id"]] = (make_tree(10 + i), codec)
        trigger = _in_thread(lambda: admin.aggregate(model["id"]))
        wait_for(marker.exists, f"the round to reach {point}")
        server.kill()
        trigger.join(30)
    left = leftovers(data)
    assert left["running"] == 4
    assert left["unreferenced"] == (1 if point == "round-stored" else 0)
    monkeypatch.delenv(PAUSE_ENV)
    with _serve(data, "--auto-aggregate", "off") as server:
        counts = check_data_dir(data)  # the sweep ran: no half-written aggregate blob
        assert (counts["aggregates"], counts["running"], counts["updates"]) == (0, 0, 4)
        admin = AdminClient(server.url, TOKEN, retries=0)
        stored = _stored_updates(admin, model["id"])
        assert sorted(stored) == sorted(sent)
        assert {u["status"] for u in stored.values()} == {PENDING}
        aggregate = admin.aggregate(model["id"])
        reader = WebClient(model["id"], url=server.url, codec="msgpack")
        reader.register()
        latest = reader.check_for_latest_model(like=make_tree(0))
        assert latest is not None and latest["aggregate"] == aggregate["id"]
        expected = reference_mean([as_received(*sent[i]) for i in sorted(sent)], make_tree(0))
        assert_tree_equal(latest["values"], expected)
    assert check_data_dir(data)["aggregates"] == 1
    figures.add("faults", f"SIGKILL at {point}, survived", 1)


def test_killed_between_blob_and_row_stores_nothing(
    data: Path, paused: Any, monkeypatch: pytest.MonkeyPatch, figures: Figures
) -> None:
    marker = paused("update-stored")
    with _serve(data) as server:
        admin = AdminClient(server.url, TOKEN, retries=0)
        model = admin.create_model("intake", requirement="require_x_updates", requirement_args=[9])
        client = WebClient(model["id"], url=server.url, codec="msgpack", retries=0)
        client.register()
        sending = _in_thread(lambda: client.send_update(make_tree(1)))
        wait_for(marker.exists, "the update's blob on disk")
        server.kill()
        sending.join(30)
    assert leftovers(data)["unreferenced"] == 1
    monkeypatch.delenv(PAUSE_ENV)
    with _serve(data) as server:
        counts = check_data_dir(data)  # the orphaned blob was swept
        assert (counts["updates"], counts["blobs"]) == (0, 0)
        again = WebClient(model["id"], uuid=client.uuid, url=server.url, codec="msgpack")
        update = again.send_update(make_tree(1))
        admin = AdminClient(server.url, TOKEN, retries=0)
        assert list(_stored_updates(admin, model["id"])) == [update["id"]]
    figures.add("faults", "SIGKILL at update-stored (blob on disk, no row), survived", 1)
