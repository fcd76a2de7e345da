"""The safetensors codec: contract, interoperability with safetensors readers, and refusals."""

from __future__ import annotations

import json
from typing import Any

import ml_dtypes
import numpy as np
import pytest
import safetensors
import safetensors.numpy
from fma_connect_safetensors import SafetensorsCodec

from fma_connect import DecodeError, EncodeError, build_codec_registry, plugin_manager
from fma_connect.testing import check_codec, to_wire_and_back

CODEC = SafetensorsCodec()


def _body(tensors: list[tuple[str, np.ndarray]]) -> bytes:
    return b"".join(bytes(chunk) for chunk in CODEC.encode(tensors))


def _header(body: bytes) -> dict[str, Any]:
    size = int.from_bytes(body[:8], "little")
    header: dict[str, Any] = json.loads(body[8 : 8 + size])
    return header


def _with_manifest(tensors: dict[str, np.ndarray], manifest: Any) -> bytes:
    specs = {
        key: safetensors.TensorSpec(
            dtype=array.dtype.name,
            shape=list(array.shape),
            data_ptr=array.ctypes.data,
            data_len=array.nbytes,
        )
        for key, array in tensors.items()
    }
    text = manifest if isinstance(manifest, str) else json.dumps(manifest)
    body: bytes = safetensors.serialize(specs, metadata={"fma_connect": text})
    return body


def test_keeps_the_codec_contract() -> None:
    check_codec(CODEC, max_examples=200)


def test_the_installed_plugin_registers_the_codec() -> None:
    info = build_codec_registry(plugin_manager()).info("safetensors")
    assert (info.plugin, info.distribution) == ("safetensors", "fma-connect-safetensors")
    assert info.codec.media_type == "application/vnd.fma-connect.safetensors"
    assert info.codec.lossless and not info.codec.json_native


def test_the_body_is_a_safetensors_file_keyed_by_name() -> None:
    weight = np.arange(6, dtype=np.float32).reshape(2, 3)
    bias = np.array([1, 2, 3], dtype=np.int64)
    loaded = safetensors.numpy.load(_body([("layer.weight", weight), ("layer.bias", bias)]))
    assert set(loaded) == {"layer.weight", "layer.bias"}
    np.testing.assert_array_equal(loaded["layer.weight"], weight)
    np.testing.assert_array_equal(loaded["layer.bias"], bias)


def test_the_callers_order_comes_back_not_the_sorted_one() -> None:
    names = ["z.last", "a.first", "m.middle", "b"]
    sent = [(name, np.full(2, i, dtype=np.float32)) for i, name in enumerate(names)]
    received = to_wire_and_back(CODEC, sent)
    assert [name for name, _ in received] == names
    assert [int(array[0]) for _, array in received] == [0, 1, 2, 3]


@pytest.mark.parametrize(
    "array",
    [
        np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4)),
        np.arange(24, dtype=np.float64).reshape(4, 6)[::2, 1::2],
        np.arange(6, dtype=">i4").reshape(2, 3),
        np.arange(6, dtype=np.float32).reshape(2, 3).T,
    ],
    ids=["fortran", "strided", "big-endian", "transposed"],
)
def test_arrays_in_any_layout_are_written_in_c_order(array: np.ndarray) -> None:
    [(_, back)] = to_wire_and_back(CODEC, [("x", array)])
    np.testing.assert_array_equal(back, array)
    [(_, read_by_safetensors)] = safetensors.numpy.load(_body([("x", array)])).items()
    np.testing.assert_array_equal(read_by_safetensors, array)


def test_duplicate_and_reserved_names_are_stored_under_index_keys() -> None:
    names = ["w", "w", "__metadata__", ""]
    sent = [(name, np.full(3, i, dtype=np.int16)) for i, name in enumerate(names)]
    body = _body(sent)
    assert sorted(k for k in _header(body) if k != "__metadata__") == ["0", "1", "2", "3"]
    received = CODEC.decode(body)
    assert [name for name, _ in received] == names
    assert [int(array[0]) for _, array in received] == [0, 1, 2, 3]


def test_bfloat16_and_float8_are_stored_in_their_safetensors_dtypes() -> None:
    sent = [
        ("bf", np.array([1.5, -2.0, np.nan], dtype=ml_dtypes.bfloat16)),
        ("e4", np.array([0.5, 1.0], dtype=ml_dtypes.float8_e4m3fn)),
        ("e5", np.array([0.25], dtype=ml_dtypes.float8_e5m2)),
    ]
    body = _body(sent)
    assert [_header(body)[key]["dtype"] for key in ("bf", "e4", "e5")] == [
        "BF16",
        "F8_E4M3",
        "F8_E5M2",
    ]
    for (_, before), (_, after) in zip(sent, CODEC.decode(body), strict=True):
        assert after.dtype == before.dtype and after.tobytes() == before.tobytes()


def test_complex128_is_stored_as_float64_pairs_and_restored() -> None:
    array = np.array([[1 + 2j, -0.0 - 3j], [np.inf, np.nan * 1j]], dtype=np.complex128)
    body = _body([("c", array), ("c64", array.astype(np.complex64))])
    header = _header(body)
    assert (header["c"]["dtype"], header["c"]["shape"]) == ("F64", [2, 2, 2])
    assert header["c64"]["dtype"] == "C64"
    [(_, c128), (_, c64)] = CODEC.decode(body)
    assert c128.dtype == np.complex128 and c128.tobytes() == array.tobytes()
    assert c64.dtype == np.complex64 and c64.shape == (2, 2)


def test_zero_d_and_empty_tensors_round_trip() -> None:
    sent: list[tuple[str, np.ndarray]] = [
        ("scalar", np.array(3.5, dtype=np.float16)),
        ("empty", np.zeros((0, 4), np.uint8)),
    ]
    received = to_wire_and_back(CODEC, sent)
    assert [(a.shape, a.dtype.name) for _, a in received] == [((), "float16"), ((0, 4), "uint8")]


def test_decoded_arrays_are_writable() -> None:
    [(_, array)] = CODEC.decode(_body([("x", np.zeros(4, np.float32))]))
    array[0] = 1.0
    assert array[0] == 1.0


def test_a_safetensors_file_from_another_tool_decodes_in_key_order() -> None:
    foreign = safetensors.numpy.save(
        {"b": np.ones(2, np.float32), "a": np.zeros((1, 2), np.int8)}, metadata={"format": "pt"}
    )
    received = CODEC.decode(foreign)
    assert [(name, array.dtype.name, array.shape) for name, array in received] == [
        ("a", "int8", (1, 2)),
        ("b", "float32", (2,)),
    ]


def test_a_foreign_dtype_off_the_allowlist_is_refused() -> None:
    array = np.zeros(2, dtype=ml_dtypes.float8_e4m3fnuz)
    foreign = safetensors.serialize(
        {
            "x": safetensors.TensorSpec(
                dtype="float8_e4m3fnuz", shape=[2], data_ptr=array.ctypes.data, data_len=2
            )
        }
    )
    with pytest.raises(DecodeError, match="F8_E4M3FNUZ"):
        CODEC.decode(foreign)


def test_an_unknown_format_version_is_refused_with_a_clear_error() -> None:
    x = np.zeros(1, np.float32)
    manifest = {
        "codec": "safetensors",
        "format_version": 2,
        "tensors": [{"key": "x", "name": "x", "dtype": "float32", "crc32": 0}],
    }
    with pytest.raises(DecodeError, match="format version 2.*reads version 1.*upgrade"):
        CODEC.decode(_with_manifest({"x": x}, manifest))


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        ({"codec": "msgpack", "format_version": 1, "tensors": []}, "tagged 'msgpack'"),
        ("not json {", "not JSON"),
        ({"codec": "safetensors"}, "must be a JSON object with codec"),
        (
            {"codec": "safetensors", "format_version": 1, "tensors": [{"key": "x"}]},
            "expected string key and name",
        ),
        (
            {
                "codec": "safetensors",
                "format_version": 1,
                "tensors": [{"key": "y", "name": "x", "dtype": "float32", "crc32": 0}],
            },
            "do not match",
        ),
        (
            {
                "codec": "safetensors",
                "format_version": 1,
                "tensors": [{"key": "x", "name": "x", "dtype": "int32", "crc32": 0}],
            },
            "metadata says int32",
        ),
        (
            {
                "codec": "safetensors",
                "format_version": 1,
                "tensors": [{"key": "x", "name": "x", "dtype": "object", "crc32": 0}],
            },
            "unsupported dtype 'object'",
        ),
    ],
)
def test_bad_metadata_is_a_decode_error(manifest: Any, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        CODEC.decode(_with_manifest({"x": np.zeros(1, np.float32)}, manifest))


def test_corruption_and_truncation_are_reported() -> None:
    body = bytearray(_body([("x", np.arange(100, dtype=np.float32))]))
    with pytest.raises(DecodeError, match="not a valid safetensors payload"):
        CODEC.decode(body[:-1])
    body[-5] ^= 0x10
    with pytest.raises(DecodeError, match=r"tensor 0 \('x'\) is corrupt"):
        CODEC.decode(body)
    with pytest.raises(DecodeError, match="bytes-like"):
        CODEC.decode("text")


def test_object_arrays_are_refused_when_encoding_naming_the_tensor() -> None:
    with pytest.raises(EncodeError, match="'bad'"):
        CODEC.encode([("bad", np.array([object()]))])
