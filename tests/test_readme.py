"""The README's quickstart runs as written against the reference server, and again."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def quickstart() -> str:
    section = README.read_text().split("\n## Quickstart\n", 1)[1].split("\n## ", 1)[0]
    blocks: list[str] = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    (code,) = blocks
    return code


def run_quickstart(url: str) -> dict[str, Any]:
    """Run the quickstart against ``url`` in the current directory; return its namespace."""
    code = quickstart()
    assert "http://127.0.0.1:8000" in code
    namespace: dict[str, Any] = {}
    exec(compile(code.replace("http://127.0.0.1:8000", url), "README", "exec"), namespace)
    return namespace


def test_quickstart_runs_against_the_reference_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("uvicorn")
    from fma_connect.admin import AdminClient
    from fma_connect.server.testing import running_server

    monkeypatch.chdir(tmp_path)  # the quickstart keeps its UUID in a file of the cwd
    with running_server(tmp_path / "data") as server:
        with AdminClient(server.url, server.admin_token) as admin:
            assert admin.create_model("quickstart", aggregator="fed_avg")["id"] == 1
        namespace = run_quickstart(server.url)
    weights = namespace["weights"]
    assert namespace["latest"] is not None, "one update with no requirement makes an aggregate"
    assert weights["dense"].dtype == np.float32 and weights["dense"].shape == (784, 10)
    assert weights["bias"].dtype == np.float32


def test_quickstart_run_twice_stays_one_client_so_all_clients_aggregates_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("uvicorn")
    from fma_connect import UpdateStatus
    from fma_connect.admin import AdminClient
    from fma_connect.server.testing import running_server

    monkeypatch.chdir(tmp_path)
    with (
        running_server(tmp_path / "data") as server,
        AdminClient(server.url, server.admin_token) as admin,
    ):
        # The model the README's admin example creates.
        model = admin.create_model("digits", aggregator="fed_avg", requirement="all_clients")
        first, second = (run_quickstart(server.url)["latest"] for _ in range(2))
        updates = admin.list_updates(model["id"])
        clients = admin.get_model(model["id"])["clients"]
    assert len(clients) == 1, "each run registered a new client"
    # A stalled second update leaves the first run's aggregate as the latest.
    assert first is not None and second is not None
    assert second["aggregate"] > first["aggregate"]
    assert [u["status"] for u in updates] == [UpdateStatus.COMPLETE] * 2
