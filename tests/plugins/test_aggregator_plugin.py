"""The krum aggregator plugin: quoted verbatim in the guide, and found by the server."""

from __future__ import annotations

import importlib.metadata
import os
import re
from pathlib import Path

import numpy as np
import pytest

from fma_connect import WebClient
from fma_connect.admin import AdminClient

CODECS = Path(__file__).resolve().parents[2] / "codecs"
_QUOTED = re.compile(
    r"<!-- aggregator file: (?P<path>\S+) -->\n```\w*\n(?P<text>.*?)```\n", re.DOTALL
)


def _installed() -> bool:
    try:
        importlib.metadata.distribution("fma-connect-krum")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


needs_krum = pytest.mark.skipif(
    not _installed() and not os.environ.get("FMA_CONNECT_PLUGIN_TESTS"),
    reason="fma-connect-krum is not installed (tox -e plugins installs it)",
)


def test_the_aggregator_guide_quotes_the_krum_plugin_verbatim() -> None:
    guide = (CODECS / "README.md").read_text()
    quoted = {m["path"]: m["text"] for m in _QUOTED.finditer(guide)}
    assert sorted(quoted) == [
        "fma-connect-krum/pyproject.toml",
        "fma-connect-krum/src/fma_connect_krum/plugin.py",
        "fma-connect-krum/tests/test_krum.py",
    ]
    for path, text in quoted.items():
        assert text == (CODECS / path).read_text(), f"codecs/README.md is out of date: {path}"


@needs_krum
def test_a_krum_round_through_the_server_resists_a_poisoned_client(tmp_path: Path) -> None:
    from fma_connect.server.testing import running_server

    initial = {"w": np.zeros(6, np.float32)}
    rng = np.random.default_rng(1)
    honest = [{"w": rng.uniform(-1, 1, 6).astype(np.float32)} for _ in range(4)]
    poisoned = {"w": honest[0]["w"] + np.float32(1e6)}
    with running_server(tmp_path / "data", auto_aggregate="off") as (url, token):
        admin = AdminClient(url, token, retries=0)
        model = admin.create_model(
            "krum", aggregator="krum", aggregator_args={"f": 1}, initial_model=initial
        )
        assert model["aggregator_args"] == {"f": 1}
        for tree in [*honest, poisoned]:
            client = WebClient(model["id"], url=url, codec="msgpack", retries=0)
            client.register()
            client.send_update(tree)
        admin.aggregate(model["id"])
        latest = client.check_for_latest_model(like=initial)
    assert latest is not None
    result = latest["values"]["w"]
    assert result.dtype == np.float32
    # Krum picks one honest update whole.
    assert any(np.array_equal(result, tree["w"]) for tree in honest)
