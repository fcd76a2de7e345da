"""The quantize codecs: contract, documented error bounds, sizes, and what is sent exactly."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import ml_dtypes
import numpy as np
import pytest
from fma_connect_quantize import CODECS, QuantizeCodec
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fma_connect import DecodeError, build_codec_registry, plugin_manager
from fma_connect.codecs import MsgpackCodec
from fma_connect.testing import check_codec, to_wire_and_back

F16, INT8, SYM = (QuantizeCodec(name) for name in CODECS)
UNIT_ROUNDOFF = {np.dtype(np.float32): 2.0**-24, np.dtype(np.float64): 2.0**-53}


def _join(chunks: Sequence[Any]) -> bytes:
    return b"".join(memoryview(chunk).cast("B").tobytes() for chunk in chunks)


def _entries(codec: QuantizeCodec, tensors: list[tuple[str, np.ndarray]]) -> list[dict[str, Any]]:
    """The manifest entries of an encoded body (read with a plain msgpack container)."""

    class Container(MsgpackCodec):
        name = codec.name

    stored = Container().decode(_join(codec.encode(tensors)))
    entries: list[dict[str, Any]] = json.loads(stored[0][1].tobytes())["tensors"]
    return entries


def _int8_bound(sent: np.ndarray, symmetric: bool) -> float:
    """The bound the README documents: half a step plus rounding into the dtype."""
    x = sent.astype(np.float64)
    lo, hi = float(x.min()), float(x.max())
    peak = max(abs(lo), abs(hi))
    scale = peak / 127 if symmetric else (hi - lo) / 255
    return scale / 2 + 2 * UNIT_ROUNDOFF[sent.dtype] * (peak + scale)


@pytest.mark.parametrize("codec", [F16, INT8, SYM], ids=lambda c: c.name)
def test_keeps_the_codec_contract_within_its_own_tolerance(codec: QuantizeCodec) -> None:
    assert not codec.lossless
    check_codec(codec, max_examples=150)


def test_the_installed_plugin_registers_three_lossy_codecs() -> None:
    registry = build_codec_registry(plugin_manager())
    for name in ("quantize-f16", "quantize-int8", "quantize-int8-sym"):
        info = registry.info(name)
        assert info.distribution == "fma-connect-quantize"
        assert info.codec.media_type == f"application/vnd.fma-connect.{name}"
        assert not info.codec.lossless and not info.codec.json_native


FLOAT_DTYPES: list[np.dtype[Any]] = [np.dtype(np.float32), np.dtype(np.float64)]
finite_floats: st.SearchStrategy[np.ndarray] = hnp.arrays(
    st.sampled_from(FLOAT_DTYPES),
    hnp.array_shapes(min_dims=1, max_dims=2, min_side=1, max_side=40),
    elements={"allow_nan": False, "allow_infinity": False},
)


@settings(max_examples=300, deadline=None)
@given(finite_floats, st.booleans())
def test_int8_error_is_within_half_a_step(sent: np.ndarray, symmetric: bool) -> None:
    codec = SYM if symmetric else INT8
    [(_, received)] = to_wire_and_back(codec, [("x", sent)])
    assert received.dtype == sent.dtype and received.shape == sent.shape
    error = np.abs(sent.astype(np.float64) - received.astype(np.float64))
    assert float(error.max()) <= _int8_bound(sent, symmetric)


@settings(max_examples=300, deadline=None)
@given(finite_floats)
def test_float16_error_is_half_a_float16_ulp(sent: np.ndarray) -> None:
    [(_, received)] = to_wire_and_back(F16, [("x", sent)])
    x, y = sent.astype(np.float64), received.astype(np.float64)
    if np.any(np.abs(x) >= 65520):
        assert received.tobytes() == sent.tobytes()  # sent exactly: float16 would overflow
    else:
        assert np.all(np.abs(x - y) <= np.maximum(2.0**-11 * np.abs(x), 2.0**-25))


def test_sizes_and_errors_on_gaussian_weights() -> None:
    weights = np.random.default_rng(0).normal(0, 0.05, size=(512, 256)).astype(np.float32)
    plain = len(_join(MsgpackCodec().encode([("w", weights)])))
    lo, hi = float(weights.min()), float(weights.max())
    for codec, ratio, bound in [
        (F16, 0.5, 2.0**-11 * float(np.abs(weights).max())),
        (INT8, 0.25, (hi - lo) / 255 / 2),
        (SYM, 0.25, max(-lo, hi) / 127 / 2),
    ]:
        body = _join(codec.encode([("w", weights)]))
        assert len(body) < plain * ratio + 1024, codec.name
        [(_, back)] = codec.decode(body)
        error = float(np.abs(back.astype(np.float64) - weights).max())
        assert bound / 4 < error <= bound * (1 + 1e-6), codec.name


def test_names_dtypes_shapes_and_order_are_kept_and_non_floats_are_exact() -> None:
    sent: list[tuple[str, np.ndarray]] = [
        ("z", np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)),
        ("steps", np.array(7, dtype=np.int64)),
        ("mask", np.array([True, False])),
        ("c", np.array([1 + 2j], dtype=np.complex64)),
        ("a", np.asfortranarray(np.ones((2, 3), dtype=">f8"))),
        ("bf", np.array([0.5, -3.0], dtype=ml_dtypes.bfloat16)),
        ("e", np.zeros((0, 5), np.float32)),
    ]
    for codec in (F16, INT8, SYM):
        received = to_wire_and_back(codec, sent)
        assert [name for name, _ in received] == [name for name, _ in sent]
        for (name, before), (_, after) in zip(sent, received, strict=True):
            assert after.dtype == before.dtype.newbyteorder("=") and after.shape == before.shape
            if before.dtype.kind in "biuc":
                assert np.array_equal(after, before), (codec.name, name)


def test_float16_keeps_nan_infinities_and_negative_zero() -> None:
    sent = np.array([np.nan, np.inf, -np.inf, -0.0, 1.0], dtype=np.float32)
    [(_, back)] = to_wire_and_back(F16, [("x", sent)])
    assert np.isnan(back[0]) and back[1] == np.inf and back[2] == -np.inf
    assert np.signbit(back[3]) and back[4] == 1.0
    assert [e["scheme"] for e in _entries(F16, [("x", sent)])] == ["float16"]


def test_float16_sends_exactly_what_it_would_overflow() -> None:
    sent = np.array([1.0, 70000.0], dtype=np.float32)
    assert [e["scheme"] for e in _entries(F16, [("x", sent)])] == ["exact"]
    [(_, back)] = to_wire_and_back(F16, [("x", sent)])
    assert back.tobytes() == sent.tobytes()


@pytest.mark.parametrize(
    ("values", "codecs"),
    [
        ([np.nan, 1.0], (INT8, SYM)),
        ([np.inf, 0.0], (INT8, SYM)),
        ([5e-324, 0.0], (INT8, SYM)),  # the step underflows
        ([-1.7e308, 1.7e308], (INT8,)),  # max - min overflows (max|x| / 127 does not)
        ([0.0, np.finfo(np.float64).max], (INT8,)),  # min + 255 * step overflows
    ],
    ids=["nan", "inf", "step-underflows", "range-overflows", "restored-max-overflows"],
)
def test_int8_sends_exactly_what_it_cannot_quantize(
    values: list[float], codecs: tuple[QuantizeCodec, ...]
) -> None:
    sent = np.array(values, dtype=np.float64)
    for codec in codecs:
        assert [e["scheme"] for e in _entries(codec, [("x", sent)])] == ["exact"], codec.name
        [(_, back)] = to_wire_and_back(codec, [("x", sent)])
        assert back.tobytes() == sent.tobytes()


def test_constant_tensors_come_back_exactly_and_symmetric_keeps_zeros() -> None:
    constant = np.full(100, 0.3, dtype=np.float32)
    [(_, back)] = to_wire_and_back(INT8, [("c", constant)])
    assert np.array_equal(back, constant)
    sparse = np.zeros(1000, dtype=np.float32)
    sparse[::97] = np.linspace(-2, 3, sparse[::97].size)
    [(_, back)] = to_wire_and_back(SYM, [("d", sparse)])
    assert np.all(back[sparse == 0] == 0)


def test_the_tolerance_check_can_fail() -> None:
    sent = np.linspace(0, 1, 256, dtype=np.float32)
    scale = 1 / 255
    assert INT8.tolerance(sent, sent + np.float32(scale / 4))
    assert not INT8.tolerance(sent, sent + np.float32(scale))
    assert not F16.tolerance(sent, sent + np.float32(1e-2))
    assert not INT8.tolerance(sent, sent.astype(np.float64))


def test_another_codecs_body_and_unknown_versions_are_refused() -> None:
    tensors = [("w", np.ones(3, np.float32))]
    with pytest.raises(DecodeError, match="tagged 'msgpack', not 'quantize-int8'"):
        INT8.decode(_join(MsgpackCodec().encode(tensors)))
    with pytest.raises(DecodeError, match="tagged 'quantize-f16', not 'quantize-int8'"):
        INT8.decode(_join(F16.encode(tensors)))

    class Container(MsgpackCodec):
        name = "quantize-int8"

    def forged(manifest: dict[str, Any], stored: np.ndarray) -> bytes:
        text = np.frombuffer(json.dumps(manifest).encode(), dtype=np.uint8)
        return _join(Container().encode([("fma_connect.quantize", text), ("w", stored)]))

    entry = {"dtype": "float32", "scheme": "affine-uint8", "offset": 0.0, "scale": 0.1}
    future = {"codec": "quantize-int8", "format_version": 2, "tensors": [entry]}
    with pytest.raises(DecodeError, match="format version 2.*reads version 1.*upgrade"):
        INT8.decode(forged(future, np.zeros(3, np.uint8)))
    current = {**future, "format_version": 1}
    with pytest.raises(DecodeError, match="cannot be stored as int8"):
        INT8.decode(forged(current, np.zeros(3, np.int8)))
    bad_scale = {**current, "tensors": [{**entry, "scale": -1.0}]}
    with pytest.raises(DecodeError, match="scale must not be negative"):
        INT8.decode(forged(bad_scale, np.zeros(3, np.uint8)))
    no_params = {**current, "tensors": [{"dtype": "float32", "scheme": "affine-uint8"}]}
    with pytest.raises(DecodeError, match="that scheme's parameters"):
        INT8.decode(forged(no_params, np.zeros(3, np.uint8)))


def test_unknown_codec_names_are_refused() -> None:
    with pytest.raises(ValueError, match="no quantize codec named 'quantize-int4'"):
        QuantizeCodec("quantize-int4")
