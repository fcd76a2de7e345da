"""The plugin's hook: fma_connect calls it when the reference server builds its registry.

The aggregator is imported inside the hook: every plugin manager (a client's too)
imports this module, and only the server, which has the ``server`` extra, calls the hook.
"""

from __future__ import annotations

import fma_connect


@fma_connect.hookimpl
def fma_connect_register_aggregators(registry: fma_connect.AggregatorRegistry) -> None:
    """Register ``krum``."""
    from .krum import Krum

    registry.add(Krum())
