"""The README's quickstart runs as written against the reference server."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def quickstart() -> str:
    section = README.read_text().split("\n## Quickstart\n", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    return code


def test_quickstart_runs_against_the_reference_server(tmp_path: Path) -> None:
    pytest.importorskip("uvicorn")
    from fma_connect.admin import AdminClient
    from fma_connect.server.testing import running_server

    code = quickstart()
    assert "http://127.0.0.1:8000" in code
    with running_server(tmp_path) as server:
        with AdminClient(server.url, server.admin_token) as admin:
            assert admin.create_model("quickstart", aggregator="fed_avg")["id"] == 1
        namespace: dict[str, Any] = {}
        exec(
            compile(code.replace("http://127.0.0.1:8000", server.url), "README", "exec"), namespace
        )
    weights = namespace["weights"]
    assert namespace["latest"] is not None, "one update with no requirement makes an aggregate"
    assert weights["dense"].dtype == np.float32 and weights["dense"].shape == (784, 10)
    assert weights["bias"].dtype == np.float32
