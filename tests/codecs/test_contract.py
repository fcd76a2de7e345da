"""Every registered codec keeps the codec contract (fma_connect.testing.check_codec)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from fma_connect import CodecRegistry, DecodeError, build_codec_registry, plugin_manager
from fma_connect.codecs.base import decode_with
from fma_connect.testing import check_codec, check_round_trip

_CODECS = build_codec_registry(plugin_manager()).names()


@pytest.mark.parametrize("name", _CODECS)
def test_codec_keeps_the_contract(name: str, registry: CodecRegistry) -> None:
    full = build_codec_registry(plugin_manager())
    check_codec(full.get(name))


def test_builtin_codecs_are_registered(registry: CodecRegistry) -> None:
    assert registry.names() == ["delta", "json", "msgpack", "npz-b64", "sparse"]


class UntaggedJson:
    """A JSON-native codec that forgets the tag: receivers could not tell it from data."""

    name = "untagged"
    media_type = "application/json"
    lossless = True
    json_native = True

    def encode(self, tensors: Sequence[tuple[str, np.ndarray]]) -> dict[str, list[float]]:
        return {name: array.tolist() for name, array in tensors}

    def decode(self, payload: dict[str, list[float]]) -> list[tuple[str, np.ndarray]]:
        return [(name, np.asarray(value)) for name, value in payload.items()]


def test_the_contract_requires_json_native_codecs_to_tag_their_payloads() -> None:
    with pytest.raises(AssertionError, match="must encode to a tagged object"):
        check_codec(UntaggedJson())


class _LossyLiar:
    """A lossy binary codec (float16 on the wire) that also loses names or shapes."""

    media_type = "application/x-lossy-liar"
    lossless = False
    json_native = False

    def __init__(self, lie: str) -> None:
        self.name = f"liar-{lie}"
        self._lie = lie

    def encode(self, tensors: Sequence[tuple[str, np.ndarray]]) -> list[bytes]:
        return [np.asarray([a.astype(np.float16) for _, a in tensors]).tobytes()]

    def decode(self, payload: bytes) -> list[tuple[str, np.ndarray]]:
        values = np.frombuffer(bytes(payload), np.float16).astype(np.float32)
        if self._lie == "names":
            return [(f"renamed-{i}", values[i : i + 1].reshape(())) for i in range(len(values))]
        return [(str(i), values[i : i + 1]) for i in range(len(values))]  # shape (1,), not ()


@pytest.mark.parametrize(("lie", "message"), [("names", "sent name"), ("shapes", "sent ()")])
def test_the_contract_holds_lossy_codecs_to_names_and_shapes(lie: str, message: str) -> None:
    sent = [(str(i), np.array(v, np.float32)) for i, v in enumerate([0.5, 1.5])]
    with pytest.raises(AssertionError, match=message):
        check_round_trip(_LossyLiar(lie), sent, tolerance=lambda a, b: True)


class _Broken:
    """A codec whose decode returns lists where arrays belong."""

    name = "broken"
    media_type = "application/x-broken"
    lossless = True
    json_native = False

    def encode(self, tensors: Sequence[tuple[str, np.ndarray]]) -> list[bytes]:
        return [b""]

    def decode(self, payload: object) -> object:
        return [("w", [1.0, 2.0])]


def test_decode_with_reports_a_codec_that_returns_no_arrays() -> None:
    with pytest.raises(
        DecodeError, match=r"codec 'broken' is broken: .* \(str, list\), not a list"
    ):
        decode_with(_Broken(), b"")  # type: ignore[arg-type]
