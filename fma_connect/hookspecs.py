"""Pluggy markers and the hook specifications plugins implement.

A plugin is a module (or object) with functions marked ``@fma_connect.hookimpl``,
advertised in the ``fma_connect`` entry-point group of its distribution::

    [project.entry-points.fma_connect]
    my_codec = "my_package.plugin"

The built-in codecs, framework adapters and aggregators register through these same hooks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from .registry import AggregatorRegistry, CodecRegistry, FrameworkRegistry

__all__ = ["PROJECT_NAME", "hookimpl", "hookspec"]

#: The pluggy project name, which is also the entry-point group.
PROJECT_NAME = "fma_connect"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def fma_connect_register_codecs(registry: CodecRegistry) -> None:
    """Add codecs to ``registry`` with ``registry.add(codec)``.

    Args:
        registry: The registry being built; adding a name that is taken raises PluginError.
    """


@hookspec
def fma_connect_register_frameworks(registry: FrameworkRegistry) -> None:
    """Add framework adapters to ``registry`` with ``registry.add(adapter)``.

    See :mod:`fma_connect.frameworks.base` for what an adapter provides.

    Args:
        registry: The registry being built; adding a name that is taken raises PluginError.
    """


@hookspec
def fma_connect_register_aggregators(registry: AggregatorRegistry) -> None:
    """Add the reference server's aggregators to ``registry`` with ``registry.add(aggregator)``.

    Only the server builds this registry: a plugin may import
    :mod:`fma_connect.server.aggregators` (which needs the ``server`` extra) inside
    its hook, so that its codecs still load on a client without the extra. See that
    module for what an aggregator provides, and :func:`fma_connect.testing.check_aggregator`
    for the contract it must meet.

    Args:
        registry: The registry being built; adding a name that is taken raises PluginError.
    """
