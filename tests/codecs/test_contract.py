"""Every registered codec keeps the codec contract (fma_connect.testing.check_codec)."""

from __future__ import annotations

import numpy as np
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


class UntaggedJson:
    """A JSON-native codec that forgets the tag: receivers could not tell it from data."""

    name = "untagged"
    media_type = "application/json"
    lossless = True
    json_native = True

    def encode(self, tensors: list[tuple[str, np.ndarray]]) -> dict[str, list[float]]:
        return {name: array.tolist() for name, array in tensors}

    def decode(self, payload: dict[str, list[float]]) -> list[tuple[str, np.ndarray]]:
        return [(name, np.asarray(value)) for name, value in payload.items()]


def test_the_contract_requires_json_native_codecs_to_tag_their_payloads() -> None:
    with pytest.raises(AssertionError, match="must encode to a tagged object"):
        check_codec(UntaggedJson())  # type: ignore[arg-type]
