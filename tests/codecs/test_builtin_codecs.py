"""What each built-in codec writes on the wire and how it refuses bad input."""

from __future__ import annotations

import base64
import io
import zipfile
import zlib
from typing import cast

import msgpack
import numpy as np
import orjson
import pytest

from fma_connect import CodecRegistry, DecodeError, EncodeError, UnknownCodecError
from fma_connect._transport import dumps_json
from fma_connect.testing import to_wire_and_back


def _body(registry: CodecRegistry, name: str, tensors: list[tuple[str, np.ndarray]]) -> bytearray:
    body = bytearray()
    for chunk in registry.get(name).encode(tensors):
        body += memoryview(chunk).cast("B")
    return body


def test_json_writes_plain_nested_lists_in_layer_order(registry: CodecRegistry) -> None:
    tensors: list[tuple[str, np.ndarray]] = [
        ("w", np.array([[0.1, 0.2]], np.float32)),
        ("b", np.array(3, np.int64)),
    ]
    wire = orjson.loads(dumps_json(registry.get("json").encode(tensors)))
    assert wire == [[[0.1, 0.2]], 3]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_json_refuses_non_finite_values_naming_the_tensor(
    registry: CodecRegistry, bad: float
) -> None:
    with pytest.raises(EncodeError, match=r"'layer\.2'.*1 NaN or infinite"):
        registry.get("json").encode([("layer.2", np.array([1.0, bad]))])


def test_json_refuses_complex_and_points_to_a_binary_codec(registry: CodecRegistry) -> None:
    with pytest.raises(EncodeError, match="complex.*msgpack"):
        registry.get("json").encode([("c", np.array([1j]))])


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"a": 1}, "must be a list of layers"),
        ([[[1, 2], [3]]], "layer 0 is not a rectangular"),
        ([["x"]], "must hold numbers only"),
        ([None], "must be a number or a nested list"),
    ],
)
def test_json_decode_refuses_what_is_not_a_list_of_numeric_layers(
    registry: CodecRegistry, payload: object, message: str
) -> None:
    with pytest.raises(DecodeError, match=message):
        registry.get("json").decode(payload)


def test_json_keeps_uint64_above_the_int64_range(registry: CodecRegistry) -> None:
    big = np.array([2**64 - 1, 1], np.uint64)
    ((_, back),) = to_wire_and_back(registry.get("json"), [("u", big)])
    assert back.dtype == np.uint64 and back.tolist() == big.tolist()


def test_msgpack_body_is_a_header_then_aligned_raw_tensors(registry: CodecRegistry) -> None:
    a = np.arange(5, dtype="<f4")
    chunks = registry.get("msgpack").encode([("a", a), ("b", a)])
    assert any(
        # (as object: numpy's stubs give ndarray __buffer__, so make it a Buffer, on 3.12+ only)
        cast(object, memoryview(c).obj) is a or np.shares_memory(np.asarray(memoryview(c)), a)
        for c in chunks[2:]
    )
    header = msgpack.Unpacker(raw=False)
    header.feed(bytes(chunks[0]))
    unpacked = header.unpack()
    assert unpacked["format_version"] == 2
    descriptors = unpacked["tensors"]
    assert [d["offset"] for d in descriptors] == [0, 64]
    assert descriptors[0]["dtype"] == "float32" and descriptors[0]["shape"] == [5]
    # The header's crc32 follows it (4 bytes, big-endian), then zeros to 64 bytes.
    checksum, padding = bytes(chunks[1][:4]), bytes(chunks[1][4:])
    assert checksum == zlib.crc32(chunks[0]).to_bytes(4, "big")
    assert padding == bytes(len(padding)) and (len(chunks[0]) + 4 + len(padding)) % 64 == 0


def test_msgpack_decodes_into_writable_views_of_a_writable_buffer(registry: CodecRegistry) -> None:
    body = _body(registry, "msgpack", [("a", np.arange(4.0))])
    ((_, array),) = registry.get("msgpack").decode(body)
    assert array.flags.writeable and np.shares_memory(array, np.frombuffer(body, np.uint8))
    ((_, readonly),) = registry.get("msgpack").decode(bytes(body))
    assert not readonly.flags.writeable


def test_msgpack_reports_truncation_and_corruption(registry: CodecRegistry) -> None:
    body = _body(registry, "msgpack", [("a", np.arange(100.0))])
    with pytest.raises(DecodeError, match="truncated"):
        registry.get("msgpack").decode(body[:-8])
    body[-1] ^= 0xFF
    with pytest.raises(DecodeError, match="'a'.*corrupt: its crc32"):
        registry.get("msgpack").decode(body)


def _msgpack_body(header: dict[str, object], data: bytes = b"", *, checksum: bool = True) -> bytes:
    # Format 2 (checksum=True): the header, its crc32, zero padding; format 1: no crc32.
    packed: bytes = msgpack.packb(header)
    if checksum:
        packed += zlib.crc32(packed).to_bytes(4, "big")
    return packed + bytes(-len(packed) % 64) + data


def _descriptor(name: str, array: np.ndarray, offset: int) -> dict[str, object]:
    return {
        "name": name,
        "dtype": str(array.dtype),
        "shape": list(array.shape),
        "offset": offset,
        "nbytes": array.nbytes,
        "crc32": zlib.crc32(array.tobytes()),
    }


def test_msgpack_writes_format_2_and_still_reads_format_1(registry: CodecRegistry) -> None:
    a, b = np.arange(5, dtype="<f4"), np.array([[1, -2]], "<i2")
    written = _body(registry, "msgpack", [("a", a), ("b", b)])
    header = msgpack.Unpacker(raw=False)
    header.feed(bytes(written))
    assert header.unpack()["format_version"] == 2
    # A version-1 body as fma_connect wrote it: header, zero padding, 64-byte aligned data.
    v1 = {
        "codec": "msgpack",
        "format_version": 1,
        "tensors": [_descriptor("a", a, 0), _descriptor("b", b, 64)],
    }
    data = a.tobytes() + bytes(64 - a.nbytes) + b.tobytes()
    for body in (bytes(written), _msgpack_body(v1, data, checksum=False)):
        decoded = registry.get("msgpack").decode(body)
        assert [name for name, _ in decoded] == ["a", "b"]
        for (_, got), want in zip(decoded, (a, b), strict=True):
            assert got.dtype == want.dtype and got.shape == want.shape
            np.testing.assert_array_equal(got, want)
    # A version-1 header followed by a checksum: its bytes are where zeros must be.
    with pytest.raises(DecodeError, match="padding after the header is not zero"):
        registry.get("msgpack").decode(_msgpack_body(v1, data, checksum=True))


def test_every_single_bit_flip_before_the_data_is_refused(registry: CodecRegistry) -> None:
    # The header (names, dtypes, shapes, offsets, version), its checksum and the padding:
    # every flipped bit is a DecodeError, never a different result.
    tensors: list[tuple[str, np.ndarray]] = [
        ("encoder.weight", np.arange(12, dtype=np.float32).reshape(3, 4)),
        ("encoder.bias", np.array([1, -2, 3], np.int16)),
        ("scale", np.array(0.5, np.float64)),
    ]
    body = bytes(_body(registry, "msgpack", tensors))
    codec = registry.get("msgpack")
    assert [name for name, _ in codec.decode(body)] == [name for name, _ in tensors]
    header = msgpack.Unpacker(raw=False)
    header.feed(body)
    header.skip()
    data_start = -(-(header.tell() + 4) // 64) * 64
    messages = set()
    for position in range(data_start):
        for bit in range(8):
            flipped = bytearray(body)
            flipped[position] ^= 1 << bit
            with pytest.raises(DecodeError) as refused:
                codec.decode(flipped)
            messages.add(str(refused.value).split(":")[0])
    assert "msgpack payload header is corrupt" in messages


def test_msgpack_refuses_a_huge_claim_before_allocating(registry: CodecRegistry) -> None:
    tensor = {
        "name": "a",
        "dtype": "float64",
        "shape": [10**12],
        "offset": 0,
        "nbytes": 8 * 10**12,
        "crc32": 0,
    }
    body = _msgpack_body({"codec": "msgpack", "format_version": 2, "tensors": [tensor]})
    with pytest.raises(DecodeError, match="truncated"):
        registry.get("msgpack").decode(body)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format_version": 3}, "format version 3, but .* reads versions 1 and 2; upgrade"),
        ({"format_version": 0}, "format version 0, but .* reads versions 1 and 2"),
        ({"format_version": 2**40}, f"format version {2**40}, but"),
        ({"codec": "other"}, "tagged 'other'"),
    ],
)
@pytest.mark.parametrize("checksum", [True, False])
def test_msgpack_refuses_unknown_versions_and_tags(
    registry: CodecRegistry, change: dict[str, object], message: str, checksum: bool
) -> None:
    version = 2 if checksum else 1
    header: dict[str, object] = {"codec": "msgpack", "format_version": version, "tensors": []}
    with pytest.raises(DecodeError, match=message):
        registry.get("msgpack").decode(_msgpack_body({**header, **change}, checksum=checksum))


@pytest.mark.parametrize("dtype", ["object", "|V8", "<U3", "datetime64[s]"])
def test_msgpack_refuses_dtypes_off_the_allowlist(registry: CodecRegistry, dtype: str) -> None:
    tensor = {"name": "a", "dtype": dtype, "shape": [1], "offset": 0, "nbytes": 8, "crc32": 0}
    body = _msgpack_body({"codec": "msgpack", "format_version": 2, "tensors": [tensor]}, bytes(8))
    with pytest.raises(DecodeError, match="unsupported dtype"):
        registry.get("msgpack").decode(body)
    with pytest.raises(EncodeError, match="numeric dtypes only"):
        registry.get("msgpack").encode(
            [("a", np.zeros(1, dtype=object if dtype == "object" else dtype))]
        )


def test_npz_b64_is_a_tagged_object(registry: CodecRegistry) -> None:
    payload = registry.get("npz-b64").encode([("w", np.ones(2, np.float32))])
    assert set(payload) == {"codec", "format_version", "payload"}
    assert payload["codec"] == "npz-b64" and payload["format_version"] == 1
    assert base64.b64decode(payload["payload"])[:2] == b"PK"


def test_npz_b64_refuses_compressed_entries_and_pickles(registry: CodecRegistry) -> None:
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        t0=np.zeros(10**6),
        manifest=np.frombuffer(b'{"names":["a"],"dtypes":["float64"]}', np.uint8),
    )
    tagged = {
        "codec": "npz-b64",
        "format_version": 1,
        "payload": base64.b64encode(buffer.getvalue()).decode(),
    }
    with pytest.raises(DecodeError, match="compressed"):
        registry.get("npz-b64").decode(tagged)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        with archive.open("t0.npy", "w") as f:
            np.lib.format.write_array(f, np.array([{"x": 1}], dtype=object), allow_pickle=True)
        with archive.open("manifest.npy", "w") as f:
            np.lib.format.write_array(
                f, np.frombuffer(b'{"names":["a"],"dtypes":["float64"]}', np.uint8)
            )
    tagged["payload"] = base64.b64encode(buffer.getvalue()).decode()
    with pytest.raises(DecodeError, match="corrupt"):
        registry.get("npz-b64").decode(tagged)


def test_npz_b64_refuses_unknown_format_version_and_bad_base64(registry: CodecRegistry) -> None:
    good = registry.get("npz-b64").encode([("w", np.ones(2))])
    with pytest.raises(DecodeError, match="format version 7"):
        registry.get("npz-b64").decode({**good, "format_version": 7})
    with pytest.raises(DecodeError, match="corrupt or truncated"):
        registry.get("npz-b64").decode({**good, "payload": good["payload"][:-12]})


def test_unknown_codec_lists_the_installed_ones(registry: CodecRegistry) -> None:
    with pytest.raises(
        UnknownCodecError,
        match="'protobuf'; installed codecs: delta, json, msgpack, npz-b64, sparse",
    ):
        registry.get("protobuf")
    with pytest.raises(
        UnknownCodecError, match="msgpack \\(application/vnd.fma-connect.msgpack\\)"
    ):
        registry.for_media_type("application/x-unknown")
