"""The aggregator hook and registry: built-ins through the hook, plugins beside them."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from fma_connect import (
    AggregatorRegistry,
    PluginError,
    build_aggregator_registry,
    hookimpl,
    plugin_manager,
)
from fma_connect.plugins import PluginWarning
from fma_connect.registry import UnknownAggregatorError
from fma_connect.server.aggregators import BUILTIN_AGGREGATORS, Mean

BUILTINS = [
    "average_layers",
    "avg_values_if_data",
    "fed_adam",
    "fed_avg",
    "fed_yogi",
    "median",
    "trimmed_mean",
]


class _Plugin:
    """A third-party plugin object registering one aggregator."""

    def __init__(self, *aggregators: Any) -> None:
        self.aggregators = aggregators

    @hookimpl
    def fma_connect_register_aggregators(self, registry: AggregatorRegistry) -> None:
        for aggregator in self.aggregators:
            registry.add(aggregator)


def test_the_builtins_register_through_the_hook() -> None:
    registry = build_aggregator_registry(plugin_manager(autoload=False))
    assert registry.names() == BUILTINS
    assert [info.aggregator.name for info in registry] == BUILTINS
    info = registry.info("median")
    assert (info.plugin, info.distribution) == ("fma_connect.builtin_aggregators", "fma-connect")
    assert {a.name for a in BUILTIN_AGGREGATORS} == set(BUILTINS)


def test_a_plugin_adds_an_aggregator_beside_the_builtins() -> None:
    pm = plugin_manager(autoload=False)
    pm.register(_Plugin(Mean("plain_mean", "a test mean", weighted=False)), name="my-plugin")
    registry = build_aggregator_registry(pm)
    assert "plain_mean" in registry and "median" in registry
    assert registry.info("plain_mean").plugin == "my-plugin"


def test_a_taken_name_is_an_error_naming_both_plugins() -> None:
    pm = plugin_manager(autoload=False)
    pm.register(_Plugin(Mean("median", "another median", weighted=False)), name="rival")
    with pytest.raises(
        PluginError, match="'median' is registered twice: by .*builtin.* and by rival"
    ):
        build_aggregator_registry(pm)


@pytest.mark.parametrize(
    ("aggregator", "message"),
    [
        (object(), "lacks the aggregator attributes"),
        (Mean("Median", "capitalised", weighted=False), "expected a lowercase name"),
        (Mean("has space", "spaces", weighted=False), "expected a lowercase name"),
    ],
)
def test_a_malformed_aggregator_is_refused(aggregator: Any, message: str) -> None:
    registry = AggregatorRegistry()
    with pytest.raises(PluginError, match=message):
        registry.add(aggregator)
    assert len(registry) == 0


def test_an_unknown_name_lists_the_installed_ones() -> None:
    registry = build_aggregator_registry(plugin_manager(autoload=False))
    with pytest.raises(
        UnknownAggregatorError, match="no aggregator named 'fed_nonesuch'; installed"
    ) as e:
        registry.get("fed_nonesuch")
    assert all(name in str(e.value) for name in BUILTINS)


class _Broken:
    @hookimpl
    def fma_connect_register_aggregators(self, registry: AggregatorRegistry) -> None:
        raise RuntimeError("boom")


def test_a_failing_plugin_is_skipped_with_a_warning_and_raises_when_strict() -> None:
    pm = plugin_manager(autoload=False, strict=False)
    pm.register(_Broken(), name="broken")
    with pytest.warns(PluginWarning, match="'broken' failed to register its aggregators"):
        registry = build_aggregator_registry(pm)
    assert registry.names() == BUILTINS
    strict = plugin_manager(autoload=False, strict=True)
    strict.register(_Broken(), name="broken")
    with pytest.raises(PluginError, match="boom"):
        build_aggregator_registry(strict)


def test_a_client_loads_the_builtin_plugins_without_the_servers_code() -> None:
    # The built-in aggregator plugin imports the server only in its hook: a client (which
    # may lack the server extra) builds its registries without importing it.
    code = (
        "import sys\n"
        "from fma_connect import build_codec_registry, plugin_manager\n"
        "build_codec_registry(plugin_manager(autoload=False))\n"
        "assert 'fma_connect.builtin_aggregators' in sys.modules\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('fma_connect.server'))\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
