"""Krum and multi-Krum for the fma_connect reference server.

Installed, it registers the aggregator ``krum`` (:class:`fma_connect_krum.krum.Krum`):
create a model with ``aggregator="krum"`` and, optionally,
``aggregator_args={"f": 2, "m": 3}``. Nothing is imported here: the entry point
(:mod:`.plugin`) is imported by every plugin manager, clients' too, and the aggregator
needs the server's code.
"""

from __future__ import annotations

__all__: list[str] = []
