"""Plugins are found through entry points; broken or clashing ones are handled."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import types
from typing import Any

import numpy as np
import pytest

from fma_connect import PluginError, build_codec_registry, hookimpl, plugin_manager
from fma_connect.codecs import MsgpackCodec
from fma_connect.plugins import PluginWarning
from fma_connect.testing import check_codec


class ReversedMsgpack(MsgpackCodec):
    """A third-party codec for the tests: msgpack under another name and media type."""

    name = "reversed-msgpack"
    media_type = "application/x-reversed"


@pytest.fixture
def fake_plugins(monkeypatch: pytest.MonkeyPatch) -> dict[str, types.ModuleType]:
    """Modules importable by name, so entry points can point at them."""
    modules: dict[str, types.ModuleType] = {}

    def add(name: str, **attrs: Any) -> None:
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        monkeypatch.setitem(sys.modules, name, module)
        modules[name] = module

    @hookimpl
    def register_good(registry: Any) -> None:
        registry.add(ReversedMsgpack())

    @hookimpl
    def register_clash(registry: Any) -> None:
        registry.add(MsgpackCodec())

    @hookimpl
    def register_raises(registry: Any) -> None:
        raise RuntimeError("boom in hook")

    add("good_plugin", fma_connect_register_codecs=register_good)
    add("clash_plugin", fma_connect_register_codecs=register_clash)
    add("raising_plugin", fma_connect_register_codecs=register_raises)
    return modules


def _ep(name: str, value: str) -> importlib.metadata.EntryPoint:
    return importlib.metadata.EntryPoint(name=name, value=value, group="fma_connect")


def test_a_plugin_found_through_an_entry_point_registers_its_codec(fake_plugins: object) -> None:
    registry = build_codec_registry(plugin_manager(entry_points=[_ep("good", "good_plugin")]))
    assert registry.names() == ["delta", "json", "msgpack", "npz-b64", "reversed-msgpack", "sparse"]
    assert registry.info("reversed-msgpack").plugin == "good"
    assert registry.info("msgpack").distribution == "fma-connect"
    check_codec(registry.get("reversed-msgpack"), max_examples=20)


def test_a_plugin_that_fails_to_import_warns_and_is_skipped(fake_plugins: object) -> None:
    eps = [_ep("missing", "no_such_module_xyz"), _ep("good", "good_plugin")]
    with pytest.warns(PluginWarning, match="'missing'.*failed to import.*no_such_module_xyz"):
        pm = plugin_manager(entry_points=eps)
    assert "reversed-msgpack" in build_codec_registry(pm)
    assert len(pm.failures) == 1


def test_strict_mode_raises_on_a_broken_plugin(
    fake_plugins: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FMA_CONNECT_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match="failed to import"):
        plugin_manager(entry_points=[_ep("missing", "no_such_module_xyz")])
    with pytest.raises(PluginError, match="failed to register its codecs: RuntimeError"):
        build_codec_registry(plugin_manager(entry_points=[_ep("raising", "raising_plugin")]))


def test_a_hook_that_raises_warns_and_the_others_still_register(fake_plugins: object) -> None:
    pm = plugin_manager(entry_points=[_ep("raising", "raising_plugin"), _ep("good", "good_plugin")])
    with pytest.warns(PluginWarning, match="'raising' failed to register"):
        registry = build_codec_registry(pm)
    assert "reversed-msgpack" in registry


def test_duplicate_codec_names_are_an_error_naming_both_plugins(fake_plugins: object) -> None:
    pm = plugin_manager(entry_points=[_ep("clash", "clash_plugin")])
    with pytest.raises(
        PluginError,
        match="'msgpack' is registered twice: by fma_connect.codecs.msgpack_numpy and by clash",
    ):
        build_codec_registry(pm)


def test_autoload_can_be_disabled_and_plugins_blocked(
    fake_plugins: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    eps = [_ep("good", "good_plugin")]
    monkeypatch.setenv("FMA_CONNECT_DISABLE_PLUGINS", "1")
    assert "reversed-msgpack" not in build_codec_registry(plugin_manager(entry_points=eps))
    monkeypatch.delenv("FMA_CONNECT_DISABLE_PLUGINS")
    monkeypatch.setenv("FMA_CONNECT_BLOCK_PLUGINS", "other, good")
    assert "reversed-msgpack" not in build_codec_registry(plugin_manager(entry_points=eps))


def test_registering_something_that_is_not_a_codec_is_refused() -> None:
    registry = build_codec_registry(plugin_manager(autoload=False))
    with pytest.raises(PluginError, match="lacks the codec attributes"):
        registry.add(np.zeros(1))  # type: ignore[arg-type]


def test_importing_fma_connect_does_not_import_server_or_test_libraries() -> None:
    code = (
        "import sys, fma_connect; "
        "heavy = ('hypothesis', 'starlette', 'uvicorn', 'responses'); "
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_trylast_plugin_sees_every_other_codec(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []

    @hookimpl(trylast=True)
    def register_wrapper(registry: Any) -> None:
        seen.extend(registry.names())

    @hookimpl
    def register_late(registry: Any) -> None:
        registry.add(ReversedMsgpack())

    for name, hook in (("wrapper_plugin", register_wrapper), ("late_plugin", register_late)):
        module = types.ModuleType(name)
        module.fma_connect_register_codecs = hook  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, name, module)
    eps = [_ep("wrapper", "wrapper_plugin"), _ep("late", "late_plugin")]
    build_codec_registry(plugin_manager(entry_points=eps))
    assert seen == ["delta", "json", "msgpack", "npz-b64", "reversed-msgpack", "sparse"]


class _Named(MsgpackCodec):
    """msgpack under a name and media type given per test."""

    def __init__(self, name: Any, media_type: str) -> None:
        self.name = name
        self.media_type = media_type


@pytest.mark.parametrize(
    ("name", "media_type", "message"),
    [
        (("tuple-name",), "application/x-t", r"name \('tuple-name',\) is not lowercase kebab"),
        ("Bad Name_X", "application/x-t", "name 'Bad Name_X' is not lowercase kebab-case"),
        ("fine", "nonsense", "media_type 'nonsense' is not a lowercase type/subtype"),
    ],
)
def test_a_malformed_codec_name_or_media_type_is_refused_naming_the_plugin(
    name: Any, media_type: str, message: str
) -> None:
    registry = build_codec_registry(plugin_manager(autoload=False))
    registry.source = ("sloppy", None, None)
    with pytest.raises(PluginError, match=f"sloppy registered the codec .*{message}"):
        registry.add(_Named(name, media_type))
    assert registry.names() == ["delta", "json", "msgpack", "npz-b64", "sparse"]


def test_a_binary_codec_cannot_take_another_ones_media_type() -> None:
    registry = build_codec_registry(plugin_manager(autoload=False))
    registry.source = ("thief", None, None)
    with pytest.raises(
        PluginError,
        match="media type 'application/vnd.fma-connect.msgpack' is registered twice: by "
        r"fma_connect.codecs.msgpack_numpy \(codec 'msgpack'\) and by thief \(codec 'thief'\)",
    ):
        registry.add(_Named("thief", "application/vnd.fma-connect.msgpack"))
    assert registry.for_media_type("application/vnd.fma-connect.msgpack").name == "msgpack"


def test_json_native_codecs_share_application_json() -> None:
    registry = build_codec_registry(plugin_manager(autoload=False))
    json_native = [info.codec for info in registry if info.codec.json_native]
    assert len(json_native) >= 2
    assert {codec.media_type for codec in json_native} == {"application/json"}


def test_both_default_registries_load_the_plugins_once() -> None:
    # A broken plugin is warned about once per process, not once per registry.
    code = (
        "import warnings, importlib.metadata as md\n"
        "from fma_connect import plugins\n"
        "ep = md.EntryPoint(name='missing', value='no_such_module_xyz', group='fma_connect')\n"
        "md.entry_points = lambda group=None: [ep]\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    plugins.default_codec_registry(); plugins.default_framework_registry()\n"
        "print(sum('no_such_module_xyz' in str(w.message) for w in caught))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "1", done.stdout + done.stderr
