"""``decode_with(..., max_tensors=n)``: built-in codecs count from their headers, others after."""

from __future__ import annotations

import base64
import contextlib
import io
import pickle
import tracemalloc
import zipfile
from typing import Any

import msgpack
import numpy as np
import orjson
import pytest

from fma_connect import CodecRegistry, DecodeError, build_codec_registry, plugin_manager
from fma_connect._transport import dumps_json
from fma_connect.codecs.base import Codec, decode_with
from fma_connect.codecs.context import CodecContext, encode_with
from fma_connect.exceptions import TooManyTensorsError

_CODECS = build_codec_registry(plugin_manager()).names()
_THREE = [(f"t{i}", np.arange(4, dtype=np.float32) + i) for i in range(3)]


def _payload(codec: Codec, tensors: list[tuple[str, np.ndarray]]) -> Any:
    """What a receiver hands to ``decode``: the parsed JSON value, or the whole body."""
    encoded = encode_with(codec, tensors, CodecContext())
    if codec.json_native:
        return orjson.loads(dumps_json(encoded))
    body = bytearray()
    for chunk in encoded:
        body += memoryview(chunk).cast("B")
    return body


@pytest.mark.parametrize("name", _CODECS)
def test_every_codec_refuses_more_tensors_than_max_tensors(name: str) -> None:
    # Plugins included: those whose decode has no max_tensors are counted after decoding.
    codec = build_codec_registry(plugin_manager()).get(name)
    payload = _payload(codec, _THREE)
    assert len(decode_with(codec, payload, max_tensors=3)) == 3
    assert len(decode_with(codec, payload)) == 3
    with pytest.raises(TooManyTensorsError, match="holds 3 tensors; at most 2") as refused:
        decode_with(codec, payload, max_tensors=2)
    assert (refused.value.count, refused.value.limit) == (3, 2)
    assert isinstance(refused.value, DecodeError)


def test_builtin_codecs_count_before_reading_any_tensor(registry: CodecRegistry) -> None:
    # Payloads whose tensors are missing or unreadable: the count is refused first, so it
    # came from the header (msgpack), the archive directory (npz-b64), the list (json).
    msgpack_body = _payload(registry.get("msgpack"), _THREE)
    header = msgpack.Unpacker(raw=False)
    header.feed(bytes(msgpack_body))
    header.skip()
    headless = msgpack_body[: -(-(header.tell() + 4) // 64) * 64]  # no tensor bytes at all
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:  # a manifest of three, no .npy entry
        manifest = orjson.dumps({"names": ["a", "b", "c"], "dtypes": ["float32"] * 3})
        with archive.open("manifest.npy", "w") as file:
            np.lib.format.write_array(file, np.frombuffer(manifest, np.uint8))
        for i in range(3):
            archive.writestr(f"t{i}.npy", b"not an array")
    junk_npz = {
        "codec": "npz-b64",
        "format_version": 1,
        "payload": base64.b64encode(buffer.getvalue()).decode(),
    }
    cases = [
        ("msgpack", headless, "truncated"),
        ("npz-b64", junk_npz, "corrupt"),
        ("json", [["x"], ["y"], ["z"]], "numbers only"),
    ]
    for name, payload, unreadable in cases:
        codec = registry.get(name)
        with pytest.raises(TooManyTensorsError, match="holds 3 tensors; at most 2"):
            decode_with(codec, payload, max_tensors=2)
        with pytest.raises(DecodeError, match=unreadable) as refused:
            decode_with(codec, payload, max_tensors=3)
        assert not isinstance(refused.value, TooManyTensorsError), name


def _peak(call: Any) -> int:
    tracemalloc.start()
    with contextlib.suppress(TooManyTensorsError):
        call()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def test_a_msgpack_header_over_the_limit_is_refused_before_its_descriptors_are_read(
    registry: CodecRegistry,
) -> None:
    codec = registry.get("msgpack")
    body = _payload(codec, [(f"layer.{i}.weight", np.zeros(1, np.float32)) for i in range(5000)])
    decoded = _peak(lambda: decode_with(codec, body))
    refused = _peak(lambda: decode_with(codec, body, max_tensors=4999))
    # Decoding builds ~1.4 KB per tensor (descriptor, array, view: 7 MB here); the
    # refusal only msgpack's unpacker, whose buffer is 1 MiB whatever it is fed.
    assert decoded > 5000 * 1000
    assert refused < (2 << 20) < decoded // 3


class _Plain:
    """A plugin codec written against ``decode(payload)`` only."""

    name = "plain"
    media_type = "application/x-plain"
    lossless = True
    json_native = False

    def __init__(self) -> None:
        self.calls: list[Any] = []

    def encode(self, tensors: Any) -> list[bytes]:
        return [orjson.dumps([name for name, _ in tensors])]

    def decode(self, payload: Any) -> list[tuple[str, np.ndarray]]:
        self.calls.append(payload)
        return [(name, np.zeros(1)) for name in orjson.loads(payload)]


class _Ignoring(_Plain):
    """A codec that takes ``max_tensors`` and ignores it."""

    def decode(
        self, payload: Any, *, max_tensors: int | None = None
    ) -> list[tuple[str, np.ndarray]]:
        return super().decode(payload)


@pytest.mark.parametrize("kind", [_Plain, _Ignoring])
def test_codecs_that_do_not_count_are_counted_after_decoding(kind: type[_Plain]) -> None:
    codec = kind()
    payload = orjson.dumps(["a", "b"])
    assert len(decode_with(codec, payload, max_tensors=2)) == 2
    with pytest.raises(TooManyTensorsError, match="holds 2 tensors; at most 1") as refused:
        decode_with(codec, payload, max_tensors=1)
    assert (refused.value.count, refused.value.limit) == (2, 1)
    assert len(codec.calls) == 2


def test_too_many_tensors_error_survives_pickling() -> None:
    error = pickle.loads(pickle.dumps(TooManyTensorsError(7, 5)))
    assert (error.count, error.limit, str(error)) == (7, 5, str(TooManyTensorsError(7, 5)))
