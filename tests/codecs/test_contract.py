"""Every registered codec keeps the codec contract (fma_connect.testing.check_codec)."""

from __future__ import annotations

import pytest

from fma_connect import CodecRegistry, build_codec_registry, plugin_manager
from fma_connect.testing import check_codec

_CODECS = build_codec_registry(plugin_manager()).names()


@pytest.mark.parametrize("name", _CODECS)
def test_codec_keeps_the_contract(name: str, registry: CodecRegistry) -> None:
    full = build_codec_registry(plugin_manager())
    check_codec(full.get(name))


def test_builtin_codecs_are_registered(registry: CodecRegistry) -> None:
    assert registry.names() == ["json", "msgpack", "npz-b64"]
