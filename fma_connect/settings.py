"""Defaults, overridable from the environment.

* ``FMA_CONNECT_URL`` - the service a WebClient talks to when no ``url`` is given
  (default: the reference server's address, ``http://127.0.0.1:8000``).
"""

from __future__ import annotations

import os

__all__ = ["DEFAULT_URL", "default_url"]

#: Where ``fma-connect serve`` listens by default.
DEFAULT_URL = "http://127.0.0.1:8000"


def default_url() -> str:
    """Return ``FMA_CONNECT_URL`` if set, else :data:`DEFAULT_URL`."""
    return os.environ.get("FMA_CONNECT_URL") or DEFAULT_URL
