"""``fma-connect simulate``: many asyncio clients through real HTTP, checked on the server."""

from __future__ import annotations

import io
import re
from collections import Counter

import pytest

pytest.importorskip("aiohttp", reason="the asyncio client needs the aio extra (py311 env has it)")

from fma_connect.admin import AdminClient
from fma_connect.cli import main
from fma_connect.server.testing import RunningServer
from fma_connect.simulate import SimulateOptions, simulate


def test_against_a_running_server_every_update_is_stored_once(
    server: RunningServer, admin: AdminClient
) -> None:
    out = io.StringIO()
    options = SimulateOptions(
        clients=20, rounds=2, model_params=2_000, url=server.url, token=server.admin_token
    )

    outcome = simulate(options, out)

    assert outcome.ok and outcome.errors == 0
    # Checked here on the server, not by trusting the simulation's own checks.
    (model,) = admin.list_models()
    updates = admin.list_updates(model["id"])
    assert len(updates) == 40 and len({u["id"] for u in updates}) == 40
    per_client = Counter(u["client"] for u in updates)
    assert len(per_client) == 20 and set(per_client.values()) == {2}
    aggregates = admin.list_aggregates(model["id"])
    assert sorted(a["id"] for a in aggregates) == outcome.aggregates and len(aggregates) == 2
    text = out.getvalue()
    for number in (1, 2):
        line = re.search(rf"^round {number}/2: .*$", text, re.MULTILINE)
        assert line is not None
        assert "20 updates" in line.group() and "errors 0" in line.group()
        assert re.search(r"\d+\.\d updates/s", line.group())
    row = r"^  (send_update|wait_for_new_model)\s+(\d+)\s+([\d.]+)\s+([\d.]+)$"
    rows = re.findall(row, text, re.MULTILINE)
    assert len(rows) == 4
    for _, count, p50, p99 in rows:
        assert int(count) == 20 and float(p50) <= float(p99)
    assert "server RSS n/a" in text  # not a child of this process: its memory is unknown
    assert "every client got every one" in text and text.rstrip().endswith("OK")


def test_the_command_starts_its_own_server_and_reports_its_memory(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status = main(
        ["simulate", "--clients", "5", "--rounds", "2", "--model-params", "500", "--no-progress"]
    )

    out = capsys.readouterr().out
    assert status == 0, out
    assert "setup (register, fetch the initial model)" in out
    rss = re.findall(r"server RSS ([\d.]+) (MB|GB)", out)
    assert len(rss) == 3 and all(float(value) > 0 for value, _ in rss)
    assert "updates stored: 10 of 10 (each client exactly 2)" in out


def test_a_url_without_its_admin_token_is_refused(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FMA_CONNECT_ADMIN_TOKEN", raising=False)
    status = main(["simulate", "--clients", "2", "--rounds", "1", "--url", "http://127.0.0.1:9"])
    assert status == 1
    assert "needs the service's admin --token" in capsys.readouterr().err
