"""``fma-connect admin``: models, delete-model, errors for missing models, quiet broken pipes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest

from fma_connect import WebClient
from fma_connect.admin import AdminClient
from fma_connect.cli import main
from fma_connect.server.testing import RunningServer


def _admin(server: RunningServer, *args: str) -> list[str]:
    return ["admin", "--url", server.url, "--token", server.admin_token, *args]


def test_models_and_delete_model(
    server: RunningServer, admin: AdminClient, capsys: pytest.CaptureFixture[str]
) -> None:
    first = admin.create_model("one")
    second = admin.create_model("two")
    assert main(_admin(server, "models")) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [m["id"] for m in listed] == [second["id"], first["id"]]
    assert main(_admin(server, "delete-model", str(first["id"]))) == 0
    capsys.readouterr()
    assert [m["id"] for m in admin.list_models()] == [second["id"]]
    assert main(_admin(server, "delete-model", str(first["id"]))) == 1
    assert "404" in capsys.readouterr().err


@pytest.mark.parametrize("action", ["updates", "aggregates"])
def test_listing_a_missing_model_is_an_error(
    server: RunningServer, capsys: pytest.CaptureFixture[str], action: str
) -> None:
    assert main(_admin(server, action, "999")) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "404" in captured.err
    assert "Not found" in captured.err


_ALL_UPDATES = [{"id": 3, "federated_model": 2}, {"id": 2, "federated_model": 1}]


class _IgnoresFilters(BaseHTTPRequestHandler):
    """A service whose update list ignores ``?federated_model=`` (as the stock one may)."""

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        body: object
        if path == "/api/v1/model_updates/":
            status, body = 200, _ALL_UPDATES
        elif path in ("/api/v1/models/1/", "/api/v1/models/2/"):
            status, body = 200, {"id": int(path.split("/")[-2])}
        else:
            status, body = 404, {"detail": "Not found."}
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def ignoring_service() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _IgnoresFilters)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_list_updates_filters_by_model_itself(ignoring_service: str) -> None:
    with AdminClient(ignoring_service, "token", retries=0) as admin:
        assert admin.list_updates(1) == [{"id": 2, "federated_model": 1}]
        assert admin.list_updates(2) == [{"id": 3, "federated_model": 2}]


def test_a_closed_pipe_ends_the_command_quietly(server: RunningServer, admin: AdminClient) -> None:
    model = admin.create_model("pipe", allow_aggregation=False)
    client = WebClient(model["id"], url=server.url, retries=0)
    for _ in range(3):
        client.send_update([np.ones(2)])
    read_end, write_end = os.pipe()
    os.close(read_end)  # like `| head` that has already exited
    try:
        result = subprocess.run(
            [sys.executable, "-m", "fma_connect", *_admin(server, "updates", str(model["id"]))],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=30,
            check=False,
        )
    finally:
        os.close(write_end)
    assert result.stderr == ""
    assert result.returncode != 0
