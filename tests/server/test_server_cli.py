"""``fma-connect admin ...`` against a running server (``serve``: test_server_persistence)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fma_connect import WebClient
from fma_connect.cli import main
from fma_connect.server.testing import RunningServer


def _run(capsys: pytest.CaptureFixture[str], server: RunningServer, *args: str) -> object:
    code = main(["admin", "--url", server.url, "--token", server.admin_token, *args])
    out = capsys.readouterr().out
    assert code == 0, out
    return json.loads(out)


def test_admin_commands(server: RunningServer, capsys: pytest.CaptureFixture[str]) -> None:
    model = _run(
        capsys,
        server,
        "create-model",
        "cli-model",
        "--requirement",
        "require_x_updates",
        "--requirement-args",
        "2",
    )
    assert isinstance(model, dict)
    assert model["requirement_args"] == [2]
    model_id = str(model["id"])
    clients = [WebClient(model["id"], url=server.url, retries=0) for _ in range(2)]
    clients[0].send_update([np.array([1.0, 3.0])])
    assert _run(capsys, server, "aggregates", model_id) == []
    clients[1].send_update([np.array([3.0, 5.0])])
    updates = _run(capsys, server, "updates", model_id)
    assert isinstance(updates, list)
    assert [u["status"] for u in updates] == [2, 2]
    aggregates = _run(capsys, server, "aggregates", model_id)
    assert isinstance(aggregates, list)
    (aggregate,) = aggregates
    latest = clients[0].check_for_new_model_aggregate()
    assert latest is not None
    np.testing.assert_array_equal(latest["result"][0], [2.0, 4.0])
    artifact = _run(capsys, server, "publish", str(aggregate["id"]), "2.0.0")
    assert isinstance(artifact, dict)
    assert artifact["version"] == "2.0.0"

    code = main(
        ["admin", "--url", server.url, "--token", server.admin_token, "aggregate", model_id]
    )
    assert code == 1
    assert "No pending updates" in capsys.readouterr().err


def test_admin_without_token_fails_cleanly(
    server: RunningServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FMA_CONNECT_ADMIN_TOKEN", raising=False)
    assert main(["admin", "--url", server.url, "updates", "1"]) == 2
    assert "token" in capsys.readouterr().err
    wrong = main(["admin", "--url", server.url, "--token", "wrong", "updates", "1"])
    assert wrong == 1
    assert "Invalid token" in capsys.readouterr().err


def test_create_model_takes_sparse_aggregates(
    server: RunningServer, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["create-model", "sparse-cli", "--aggregate-fraction", "0.05"]
    model = _run(capsys, server, *args, "--aggregate-values", "q4")
    assert isinstance(model, dict)
    assert (model["aggregate_fraction"], model["aggregate_values"]) == (0.05, "q4")
    code = main(
        [
            "admin",
            "--url",
            server.url,
            "--token",
            server.admin_token,
            *args[:2],
            "--aggregate-fraction",
            "2",
        ]
    )
    assert code == 1
    assert "aggregate_fraction" in capsys.readouterr().err
