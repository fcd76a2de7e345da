"""Finding plugins: the built-in ones and those advertised through entry points.

Environment variables:

* ``FMA_CONNECT_DISABLE_PLUGINS=1`` - load only the built-in plugins (no entry points).
* ``FMA_CONNECT_BLOCK_PLUGINS=a,b`` - skip the entry points with these names.
* ``FMA_CONNECT_STRICT_PLUGINS=1`` - a plugin that fails to import or to register raises
  :class:`~fma_connect.exceptions.PluginError` instead of warning and being skipped.

A registry clash (two codecs, two framework adapters, or two aggregators with one name) is
an error in every mode.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import os
import warnings
from collections.abc import Iterable
from typing import Any

import pluggy

from . import hookspecs
from .exceptions import PluginError
from .registry import AggregatorRegistry, CodecRegistry, FrameworkRegistry

__all__ = [
    "BUILTIN_PLUGINS",
    "PluginManager",
    "PluginWarning",
    "build_aggregator_registry",
    "build_codec_registry",
    "build_framework_registry",
    "default_aggregator_registry",
    "default_codec_registry",
    "default_framework_registry",
    "plugin_manager",
]

#: Modules of the plugins that ship with fma_connect; they use the same hooks as any other.
BUILTIN_PLUGINS = (
    "fma_connect.codecs.json_lists",
    "fma_connect.codecs.msgpack_numpy",
    "fma_connect.codecs.npz_base64",
    "fma_connect.codecs.xor_delta",
    "fma_connect.codecs.sparse_delta",
    # Adapters are asked last-registered first: jax, which claims any registered pytree
    # node, comes right after numpy so that the specific adapters are asked before it.
    "fma_connect.frameworks.numpy_adapter",
    "fma_connect.frameworks.jax_adapter",
    "fma_connect.frameworks.torch_adapter",
    "fma_connect.frameworks.tf_adapter",
    "fma_connect.frameworks.sklearn_adapter",
    # The server's aggregators: this module imports the server's code only in its hook.
    "fma_connect.builtin_aggregators",
)

_TRUE = {"1", "true", "yes", "on"}


class PluginWarning(UserWarning):
    """A plugin was skipped because it failed to import or to register."""


class PluginManager(pluggy.PluginManager):
    """A pluggy manager that remembers which distribution each plugin came from.

    Attributes:
        distributions: plugin name -> (distribution name, version), when known.
        failures: one message per plugin that was skipped.
        strict: whether a failing plugin raises instead of being skipped.
    """

    def __init__(self, *, strict: bool = False) -> None:
        super().__init__(hookspecs.PROJECT_NAME)
        self.add_hookspecs(hookspecs)
        self.distributions: dict[str, tuple[str | None, str | None]] = {}
        self.failures: list[str] = []
        self.strict = strict

    def skip(self, message: str, exc: BaseException) -> None:
        """Record a failing plugin: raise in strict mode, else warn and go on."""
        if self.strict:
            raise PluginError(message) from exc
        self.failures.append(message)
        warnings.warn(message, PluginWarning, stacklevel=3)


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


def plugin_manager(
    *,
    entry_points: Iterable[importlib.metadata.EntryPoint] | None = None,
    autoload: bool | None = None,
    strict: bool | None = None,
) -> PluginManager:
    """Build a fresh plugin manager holding the built-in plugins and the installed ones.

    Args:
        entry_points: The entry points to load; default: the installed ``fma_connect`` group.
        autoload: Load entry points at all; default: unless ``FMA_CONNECT_DISABLE_PLUGINS``.
        strict: Raise on a failing plugin; default: ``FMA_CONNECT_STRICT_PLUGINS``.
    """
    pm = PluginManager(strict=_env_flag("FMA_CONNECT_STRICT_PLUGINS") if strict is None else strict)
    from . import __version__

    for module_name in BUILTIN_PLUGINS:
        pm.register(importlib.import_module(module_name), name=module_name)
        pm.distributions[module_name] = ("fma-connect", __version__)
    if autoload is None:
        autoload = not _env_flag("FMA_CONNECT_DISABLE_PLUGINS")
    if not autoload:
        return pm
    if entry_points is None:
        entry_points = importlib.metadata.entry_points(group=hookspecs.PROJECT_NAME)
    blocked = {n.strip() for n in os.environ.get("FMA_CONNECT_BLOCK_PLUGINS", "").split(",")}
    for ep in entry_points:
        if ep.name in blocked or pm.get_plugin(ep.name) is not None:
            continue
        try:
            plugin = ep.load()
        except Exception as exc:  # a broken plugin must not take the library down
            pm.skip(f"plugin {ep.name!r} ({ep.value}) failed to import: {exc!r}", exc)
            continue
        pm.register(plugin, name=ep.name)
        dist = ep.dist
        pm.distributions[ep.name] = (dist.name, dist.version) if dist else (None, None)
    return pm


def build_codec_registry(pm: PluginManager) -> CodecRegistry:
    """Run every plugin's ``fma_connect_register_codecs`` hook into a new registry.

    Raises:
        PluginError: two plugins registered the same codec name, or (strict mode) a
            plugin's hook raised.
    """
    registry = CodecRegistry()
    _register_all(pm, pm.hook.fma_connect_register_codecs, registry, "codecs")
    return registry


def build_framework_registry(pm: PluginManager) -> FrameworkRegistry:
    """Run every plugin's ``fma_connect_register_frameworks`` hook into a new registry.

    Raises:
        PluginError: two plugins registered the same framework name, or (strict mode) a
            plugin's hook raised.
    """
    registry = FrameworkRegistry()
    _register_all(pm, pm.hook.fma_connect_register_frameworks, registry, "framework adapters")
    return registry


def build_aggregator_registry(pm: PluginManager) -> AggregatorRegistry:
    """Run every plugin's ``fma_connect_register_aggregators`` hook into a new registry.

    Raises:
        PluginError: two plugins registered the same aggregator name, or (strict mode) a
            plugin's hook raised.
    """
    registry = AggregatorRegistry()
    _register_all(pm, pm.hook.fma_connect_register_aggregators, registry, "aggregators")
    return registry


def _register_all(
    pm: PluginManager,
    hook: pluggy.HookCaller,
    registry: CodecRegistry | FrameworkRegistry | AggregatorRegistry,
    what: str,
) -> None:
    # One call per implementation (instead of the hook caller) so each registration
    # is attributed to its plugin and one failing plugin does not stop the others.
    # Order: tryfirst hooks, then the rest in registration order (built-ins first), then
    # trylast ones - so a trylast plugin (e.g. one wrapping other codecs) sees them all.
    impls = hook.get_hookimpls()
    ordered = (
        [i for i in impls if i.tryfirst]
        + [i for i in impls if not (i.tryfirst or i.trylast)]
        + [i for i in impls if i.trylast]
    )
    for impl in ordered:
        registry.source = (impl.plugin_name, *pm.distributions.get(impl.plugin_name, (None, None)))
        kwargs: dict[str, Any] = {name: registry for name in impl.argnames}
        try:
            impl.function(**kwargs)
        except PluginError:
            raise
        except Exception as exc:
            pm.skip(f"plugin {impl.plugin_name!r} failed to register its {what}: {exc!r}", exc)
    registry.source = ("user", None, None)


@functools.cache
def _default_plugin_manager() -> PluginManager:
    # One manager for both default registries: each installed plugin is loaded (and a
    # broken one warned about) once per process.
    return plugin_manager()


@functools.cache
def default_codec_registry() -> CodecRegistry:
    """Return the process-wide registry built from the installed plugins (built once)."""
    return build_codec_registry(_default_plugin_manager())


@functools.cache
def default_framework_registry() -> FrameworkRegistry:
    """Return the process-wide framework adapter registry (built once, like the codecs')."""
    return build_framework_registry(_default_plugin_manager())


@functools.cache
def default_aggregator_registry() -> AggregatorRegistry:
    """Return the process-wide aggregator registry (built once, like the codecs')."""
    return build_aggregator_registry(_default_plugin_manager())
