"""What the benchmark needs beyond the client, and how to say that something is missing.

The ``bench`` extra installs it all: the reference server (``starlette``, ``uvicorn``)
without which nothing round-trips, and the optional parts (the ``safetensors``
baseline, the ``matplotlib`` chart), which are skipped with a note when absent.
"""

from __future__ import annotations

import importlib

__all__ = ["INSTALL", "SERVER_MODULES", "missing"]

#: The one command that installs everything the benchmark can use.
INSTALL = "pip install 'fma-connect[bench]'"
#: Third-party modules the benchmark cannot run without (the reference server's stack).
SERVER_MODULES = ("starlette", "uvicorn", "httptools")


def missing(module: str) -> str | None:
    """Why ``module`` cannot be imported (naming the extra), or None when it can.

    Only a missing module counts: a module that is installed but fails on import
    raises, since hiding that would hide a real fault.
    """
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as exc:
        # exc.name is the module actually missing (e.g. safetensors for safetensors.numpy).
        return f"{exc.name or module} is not installed ({INSTALL})"
    return None
