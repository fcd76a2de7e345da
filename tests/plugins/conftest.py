"""The codec plugins under codecs/ must be installed for these tests (``tox -e plugins``).

Elsewhere (a plain ``pytest`` run) they are skipped with that reason; with
``FMA_CONNECT_PLUGIN_TESTS=1``, as the tox env sets, a missing plugin fails them.
"""

from __future__ import annotations

import importlib.metadata
import os

import pytest
from plugin_helpers import PLUGINS


def _missing() -> list[str]:
    missing = []
    for distribution in PLUGINS:
        try:
            importlib.metadata.distribution(distribution)
        except importlib.metadata.PackageNotFoundError:
            missing.append(distribution)
    return missing


@pytest.fixture(autouse=True, scope="session")
def _plugins_installed() -> None:
    missing = _missing()
    if not missing:
        return
    message = f"codec plugins not installed: {', '.join(missing)}; run `tox -e plugins`"
    if os.environ.get("FMA_CONNECT_PLUGIN_TESTS") == "1":
        pytest.fail(message)
    pytest.skip(message)
