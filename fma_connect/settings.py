"""Client settings.

``default_url`` is the service a WebClient talks to when no ``url`` is given: the
``FMA_CONNECT_URL`` environment variable when set at import, else the reference
server's address. Like the original client's setting, it is a plain string a program
may reassign (``fma_connect.settings.default_url = "http://fma.internal:8000/"``).
"""

from __future__ import annotations

import os

__all__ = ["DEFAULT_URL", "default_url"]

#: Where ``fma-connect serve`` listens by default.
DEFAULT_URL = "http://127.0.0.1:8000/"

default_url: str = os.environ.get("FMA_CONNECT_URL") or DEFAULT_URL
