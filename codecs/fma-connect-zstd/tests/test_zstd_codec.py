"""The zstd codecs: contract, layout, options, and the bound on decompressed size."""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import zstandard
from fma_connect_zstd import DEFAULT_MAX_OUTPUT_SIZE, ZstdCodec
from fma_connect_zstd.frames import tag_frame

from fma_connect import DecodeError, Tensors, build_codec_registry, plugin_manager
from fma_connect.codecs import MsgpackCodec, NpzBase64Codec
from fma_connect.codecs.context import MissingBaseError
from fma_connect.codecs.sparse_delta import SparseDeltaCodec
from fma_connect.codecs.xor_delta import XorDeltaCodec
from fma_connect.plugins import PluginWarning
from fma_connect.testing import check_codec, holding, to_wire_and_back

MIB = 1 << 20


def _join(chunks: Sequence[Any]) -> bytes:
    return b"".join(memoryview(chunk).cast("B").tobytes() for chunk in chunks)


def _inner_body(tensors: Tensors) -> bytes:
    return _join(MsgpackCodec().encode(tensors))


def _hostile(inner: bytes, *, content_size: bool) -> bytes:
    """A tag frame and a zstd frame of ``inner``, with or without its declared size."""
    frame = zstandard.ZstdCompressor(level=3, write_content_size=content_size).compress(inner)
    return tag_frame("zstd+msgpack") + frame


@pytest.mark.parametrize("level", [-5, 3, 19])
def test_keeps_the_codec_contract(level: int) -> None:
    check_codec(ZstdCodec(MsgpackCodec(), level=level), max_examples=100)


def test_zstd_msgpack_is_registered_for_the_builtin_binary_codec() -> None:
    registry = build_codec_registry(plugin_manager())
    info = registry.info("zstd+msgpack")
    assert (info.plugin, info.distribution) == ("zstd", "fma-connect-zstd")
    codec = info.codec
    assert codec.media_type == "application/vnd.fma-connect.msgpack+zstd"
    assert codec.lossless and not codec.json_native
    assert registry.for_media_type("application/vnd.fma-connect.msgpack+zstd") is codec
    assert "zstd+json" not in registry and "zstd+npz-b64" not in registry


def test_the_body_is_a_zstd_stream_whose_content_is_the_inner_body() -> None:
    tensors = [("w", np.arange(1000, dtype=np.float32))]
    body = _join(ZstdCodec(MsgpackCodec()).encode(tensors))
    # A standard zstd reader skips the tag frame and yields the msgpack body.
    reader = zstandard.ZstdDecompressor().stream_reader(body, read_across_frames=True)
    assert reader.read() == _inner_body(tensors)
    assert json.loads(body[8 : 8 + int.from_bytes(body[4:8], "little")]) == {
        "codec": "zstd+msgpack",
        "format_version": 1,
    }


def test_sparse_deltas_shrink_to_a_fraction() -> None:
    delta = np.zeros(1 << 20, dtype=np.float32)
    rng = np.random.default_rng(0)
    changed = rng.choice(delta.size, delta.size // 100, replace=False)
    delta[changed] = rng.normal(size=changed.size)
    raw = len(_inner_body([("d", delta)]))
    assert len(_join(ZstdCodec(MsgpackCodec()).encode([("d", delta)]))) < raw * 0.1


def test_higher_levels_compress_harder() -> None:
    wave = [("w", (np.sin(np.arange(1 << 20) / 100) * 1000).astype(np.int16))]
    fast = len(_join(ZstdCodec(MsgpackCodec(), level=1).encode(wave)))
    small = len(_join(ZstdCodec(MsgpackCodec(), level=19).encode(wave)))
    assert small < fast * 0.8


def test_decoded_arrays_are_writable_views_of_one_buffer() -> None:
    received = to_wire_and_back(ZstdCodec(MsgpackCodec()), [("a", np.zeros(3)), ("b", np.ones(2))])
    for _, array in received:
        array[0] = 7
        assert array[0] == 7
    assert received[0][1].base is not None


def test_compression_threads_write_the_same_kind_of_body() -> None:
    tensors = [("w", np.arange(3 << 20, dtype=np.float32))]
    codec = ZstdCodec(MsgpackCodec(), threads=2)
    [(_, array)] = to_wire_and_back(codec, tensors)
    assert np.array_equal(array, tensors[0][1])


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="JSON-native"):
        ZstdCodec(NpzBase64Codec())
    with pytest.raises(ValueError, match="level must be between"):
        ZstdCodec(MsgpackCodec(), level=99)
    with pytest.raises(ValueError, match="max_output_size"):
        ZstdCodec(MsgpackCodec(), max_output_size=-1)
    assert ZstdCodec(MsgpackCodec()).max_output_size == DEFAULT_MAX_OUTPUT_SIZE == 8 << 30


def test_a_declared_size_above_the_bound_is_refused_before_decompressing() -> None:
    # 256 MiB of zeros compress to a few KiB; the frame header says how large they are.
    bomb = _hostile(_inner_body([("z", np.zeros(64 * MIB, dtype=np.float32))]), content_size=True)
    assert len(bomb) < 64 * 1024
    codec = ZstdCodec(MsgpackCodec(), max_output_size=16 * MIB)
    tracemalloc.start()
    try:
        with pytest.raises(DecodeError, match=r"declares \d+ bytes.*16777216-byte bound"):
            codec.decode(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < MIB  # refused from the header: nothing was decompressed


def test_a_frame_without_declared_size_is_bounded_while_it_streams() -> None:
    bomb = _hostile(_inner_body([("z", np.zeros(64 * MIB, dtype=np.float32))]), content_size=False)
    assert zstandard.frame_content_size(bomb[len(tag_frame("zstd+msgpack")) :]) == -1
    codec = ZstdCodec(MsgpackCodec(), max_output_size=16 * MIB)
    tracemalloc.start()
    try:
        with pytest.raises(DecodeError, match="decompresses to more than the 16777216-byte"):
            codec.decode(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 40 * MIB  # the bound plus one step and a growth margin, not 256 MiB


def test_a_frame_without_declared_size_within_the_bound_decodes() -> None:
    tensors = [("w", np.arange(50_000, dtype=np.int64))]
    body = _hostile(_inner_body(tensors), content_size=False)
    [(name, array)] = ZstdCodec(MsgpackCodec()).decode(bytearray(body))
    assert name == "w" and np.array_equal(array, tensors[0][1])


def test_truncation_trailing_data_and_corruption_are_decode_errors() -> None:
    codec = ZstdCodec(MsgpackCodec())
    body = _join(codec.encode([("w", np.arange(10_000, dtype=np.float64))]))
    with pytest.raises(DecodeError, match="truncated"):
        codec.decode(body[:-3])
    with pytest.raises(DecodeError, match="bytes after its zstd frame"):
        codec.decode(body + zstandard.ZstdCompressor().compress(b"more"))
    damaged = bytearray(body)
    damaged[len(body) // 2] ^= 0xFF
    with pytest.raises(DecodeError):
        codec.decode(damaged)
    with pytest.raises(DecodeError, match="must start with the fma_connect tag frame"):
        codec.decode(_inner_body([("w", np.zeros(1))]))


def test_another_codecs_tag_and_unknown_versions_are_refused() -> None:
    class Renamed(MsgpackCodec):
        name = "other"

    body = _join(ZstdCodec(Renamed()).encode([("w", np.zeros(1))]))
    with pytest.raises(DecodeError, match="tagged 'zstd\\+other', not 'zstd\\+msgpack'"):
        ZstdCodec(MsgpackCodec()).decode(body)
    text = json.dumps({"codec": "zstd+msgpack", "format_version": 2}).encode()
    future = (0x184D2A5E).to_bytes(4, "little") + len(text).to_bytes(4, "little") + text
    frame = zstandard.ZstdCompressor().compress(_inner_body([("w", np.zeros(1))]))
    with pytest.raises(DecodeError, match="format version 2.*reads version 1.*upgrade"):
        ZstdCodec(MsgpackCodec()).decode(future + frame)


def test_a_lossy_inner_codec_lends_its_tolerance() -> None:
    class Lossy(MsgpackCodec):
        name = "lossy"
        lossless = False

        def tolerance(self, sent: np.ndarray, received: np.ndarray) -> bool:
            return True

    wrapped = ZstdCodec(Lossy())
    assert not wrapped.lossless and wrapped.tolerance is not None
    assert ZstdCodec(MsgpackCodec()).tolerance is None


def test_environment_variables_set_the_registered_codecs_options(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FMA_CONNECT_ZSTD_LEVEL", "9")
    monkeypatch.setenv("FMA_CONNECT_ZSTD_MAX_OUTPUT_SIZE", str(MIB))
    codec = build_codec_registry(plugin_manager()).get("zstd+msgpack")
    assert isinstance(codec, ZstdCodec)
    assert (codec.level, codec.max_output_size) == (9, MIB)
    monkeypatch.setenv("FMA_CONNECT_ZSTD_LEVEL", "fast")
    with pytest.warns(PluginWarning, match="FMA_CONNECT_ZSTD_LEVEL must be an integer"):
        registry = build_codec_registry(plugin_manager())
    assert "zstd+msgpack" not in registry


@pytest.mark.parametrize(
    "inner",
    [XorDeltaCodec(), SparseDeltaCodec(0.3, "float32", error_feedback=False)],
    ids=["delta", "sparse"],
)
def test_a_delta_codec_composes_and_gets_its_context(inner: Any) -> None:
    codec = ZstdCodec(inner)
    assert codec.uses_context and codec.lossless == inner.lossless
    check_codec(codec, max_examples=50)
    rng = np.random.default_rng(4)
    base = rng.standard_normal(4096).astype(np.float32)
    update = base.copy()
    update[::64] += 1.0  # 64 changes: a delta says so in far fewer bytes than the tensor
    body = _join(codec.encode([("w", update)], holding(3, [("w", base)])))
    assert len(body) < base.nbytes // 8
    ((_, back),) = to_wire_and_back(codec, [("w", update)], context=holding(3, [("w", base)]))
    np.testing.assert_array_equal(back, update)
    with pytest.raises(MissingBaseError):  # decoded against what the receiver holds
        codec.decode(body, holding(4, [("w", base)]))


def test_the_delta_codecs_are_not_registered_compressed_again() -> None:
    registry = build_codec_registry(plugin_manager())
    assert "delta" in registry and "sparse" in registry
    assert "zstd+delta" not in registry and "zstd+sparse" not in registry
