"""The built-in plugin that registers the reference server's aggregators.

It goes through :func:`~fma_connect.hookspecs.fma_connect_register_aggregators` like any
third-party plugin. It lives outside :mod:`fma_connect.server` because every plugin
manager (clients' too) imports the built-in plugins, while the aggregators are the
server's code: they are imported only when the hook runs, which only the server does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .hookspecs import hookimpl

if TYPE_CHECKING:
    from .registry import AggregatorRegistry

__all__ = ["fma_connect_register_aggregators"]


@hookimpl
def fma_connect_register_aggregators(registry: AggregatorRegistry) -> None:
    """Register the built-in aggregators (see :mod:`fma_connect.server.aggregators`)."""
    from .server.aggregators import BUILTIN_AGGREGATORS

    for aggregator in BUILTIN_AGGREGATORS:
        registry.add(aggregator)
