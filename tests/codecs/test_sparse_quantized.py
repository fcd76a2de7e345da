"""The ``sparse`` codec's b-bit stochastic values (``q2`` ... ``q8``) and its compression."""

from __future__ import annotations

import base64
import math
import zlib
from typing import Any, Literal

import numpy as np
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fma_connect import DecodeError
from fma_connect.codecs import manifested
from fma_connect.codecs.context import CodecContext
from fma_connect.codecs.index_coding import decode_positions
from fma_connect.codecs.sparse_delta import SparseDeltaCodec
from fma_connect.codecs.sparse_values import QUANTIZED, VALUE_CODINGS, decode_values
from fma_connect.server.sparse_aggregates import sparse_step
from fma_connect.testing import holding

_ENTRY_KEYS = {"name", "dtype", "shape", "mode", "k", "positions", "scale"}
_QS = sorted(QUANTIZED)
_WIDTHS: dict[type[np.floating[Any]], Literal[16, 32, 64]] = {
    np.float16: 16,
    np.float32: 32,
    np.float64: 64,
}


def _body(codec: SparseDeltaCodec, tensors: list[tuple[str, np.ndarray]], context: Any) -> bytes:
    return b"".join(bytes(memoryview(c).cast("B")) for c in codec.encode(tensors, context))


def _open(body: bytes) -> tuple[dict[str, Any], list[tuple[str, np.ndarray]]]:
    """A payload's manifest and blocks, as the codec reads them."""
    return manifested.unpack(
        "sparse",
        bytearray(body),
        version=(1, 2),  # type: ignore[arg-type]
        keys={"values"},
        entry_keys=_ENTRY_KEYS,
        max_tensors=None,
        max_blocks=None,
    )


def _repack(manifest: dict[str, Any], blocks: list[tuple[str, np.ndarray]]) -> bytearray:
    body = bytearray()
    for chunk in manifested.pack("sparse", manifest, blocks):
        body += memoryview(chunk).cast("B")
    return body


def _work(dtype: np.dtype[Any]) -> np.dtype[Any]:
    return np.dtype(np.float64 if dtype.itemsize >= 8 else np.float32)


@st.composite
def _cases(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    """A base and an update of one float tensor (any shape, empty and 0-d included),
    sometimes with no change at all."""
    dtype = draw(st.sampled_from(list(_WIDTHS)))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=9))
    elements = st.floats(-1e3, 1e3, width=_WIDTHS[dtype])
    base = draw(hnp.arrays(dtype, shape, elements=elements))
    if draw(st.booleans()):
        return base, base.copy()
    return base, draw(hnp.arrays(dtype, shape, elements=elements))


@settings(max_examples=150, deadline=None)
@given(_cases(), st.floats(0.01, 1.0), st.sampled_from(_QS), st.booleans())
def test_each_value_is_within_a_step_and_the_residual_is_what_the_receiver_lacks(
    case: tuple[np.ndarray, np.ndarray], fraction: float, values: str, compress: bool
) -> None:
    base, update = case
    codec = SparseDeltaCodec(fraction, values, seed=0, compress=compress)
    context = holding(1, [("w", base)])
    body = _body(codec, [("w", update)], context)
    ((_, got),) = codec.decode(bytearray(body), holding(1, [("w", base)]))
    assert got.dtype == update.dtype and got.shape == update.shape

    plain = SparseDeltaCodec(fraction, values, seed=0)  # the same draws, uncompressed
    manifest, blocks = _open(_body(plain, [("w", update)], holding(1, [("w", base)])))
    ((entry,),) = [manifest["tensors"]]
    work = _work(update.dtype)
    change = update.astype(work).reshape(-1) - base.astype(work).reshape(-1)
    k, (low, high) = entry["k"], entry["scale"]
    positions = decode_positions(entry["positions"], blocks[0][1].tobytes(), k, change.size)
    assert k == min(change.size, max(1, math.ceil(fraction * change.size)))
    assert blocks[1][1].nbytes == -(-k * VALUE_CODINGS[values] // 8)
    sent = decode_values(values, blocks[1][1], entry["scale"], k, "w", work)
    chosen = np.abs(change[positions].astype(np.float64))
    if k:
        assert (low, high) == (chosen.min(), chosen.max())
    step = (high - low) / (2 ** (VALUE_CODINGS[values] - 1) - 1)
    error = np.abs(sent.astype(np.float64) - change[positions])
    # Less than a step, but for the rounding of the levels to the working dtype.
    slack = 4 * np.finfo(work).eps * high + np.finfo(work).smallest_subnormal
    assert (error <= step * (1 + 1e-6) + slack).all()
    assert (np.sign(sent) * np.sign(change[positions]) >= 0).all()  # signs are exact

    # What the receiver rebuilds: base + sent in the working dtype, cast back; and the
    # residual holds exactly the rest of the change.
    rebuilt = base.astype(work).reshape(-1)
    rebuilt[positions] += sent  # only there: -0.0 + 0.0 would be +0.0
    assert got.reshape(-1).tobytes() == rebuilt.astype(update.dtype).tobytes()
    expected = change.copy()
    expected[positions] -= sent
    assert context.state["residual"]["w"].tobytes() == expected.tobytes()


@pytest.mark.parametrize("values", _QS)
def test_stochastic_rounding_is_unbiased_and_takes_both_neighbours(values: str) -> None:
    """Each magnitude's mean over many copies is itself, within 6 standard errors; a
    rounding to the nearest level would be off by up to half a step."""
    targets = np.array([1.0, 2.0, 1.1, 1.37, -1.5, 1.999, -1.01], np.float32)
    copies = 20_000
    change = np.repeat(targets, copies)
    base = np.zeros_like(change)
    codec = SparseDeltaCodec(1.0, values, error_feedback=False, seed=1)
    ((_, got),) = codec.decode(
        bytearray(_body(codec, [("w", change)], holding(1, [("w", base)]))),
        holding(1, [("w", base)]),
    )
    step = 1.0 / (2 ** (VALUE_CODINGS[values] - 1) - 1)
    groups = got.astype(np.float64).reshape(targets.size, copies)
    error = groups.mean(axis=1) - targets
    assert (np.abs(error) <= 6 * (step / 2) / math.sqrt(copies) + 1e-6).all(), error
    for target, group in zip(targets, groups, strict=True):
        offset = (abs(float(target)) - 1.0) / step % 1.0
        if min(offset, 1.0 - offset) > 1e-6:  # between two levels: both are sent
            assert len(np.unique(group)) == 2, (target, np.unique(group))
        else:  # on a level: that level only
            assert len(np.unique(group)) == 1, (target, np.unique(group))


def test_bits_per_value_and_the_accuracy_they_buy() -> None:
    rng = np.random.default_rng(2)
    base = rng.standard_normal(100_000).astype(np.float32)
    update = base + rng.standard_normal(100_000).astype(np.float32) * 0.01
    errors, sizes = {}, {}
    for values in ["q2", "q4", "q8", "float16"]:
        codec = SparseDeltaCodec(0.05, values, error_feedback=False, seed=3)
        body = _body(codec, [("w", update)], holding(1, [("w", base)]))
        ((_, got),) = codec.decode(bytearray(body), holding(1, [("w", base)]))
        kept = got != base
        errors[values] = float(np.abs((got - update)[kept]).max())
        sizes[values] = len(body)
        _, blocks = _open(body)
        assert blocks[1][1].nbytes == -(-5000 * VALUE_CODINGS[values] // 8)
    assert sizes["q2"] < sizes["q4"] < sizes["q8"] < sizes["float16"]
    assert errors["float16"] < errors["q8"] < errors["q4"] < errors["q2"]


def test_a_seed_makes_payloads_reproducible_and_draws_go_on_between_encodes() -> None:
    rng = np.random.default_rng(4)
    base = np.zeros(1000, np.float32)
    update = rng.standard_normal(1000).astype(np.float32)

    def body(codec: SparseDeltaCodec) -> bytes:  # a fresh context: no residual
        return _body(codec, [("w", update)], holding(1, [("w", base)]))

    def codec(seed: int) -> SparseDeltaCodec:
        return SparseDeltaCodec(0.5, "q3", seed=seed)

    first = codec(7)
    assert body(first) == body(codec(7)) != body(codec(8))
    assert body(first) != body(codec(7))  # first's next draws


def _mixed_model(seed: int) -> tuple[list[tuple[str, np.ndarray]], list[tuple[str, np.ndarray]]]:
    """float16/32/64 tensors (one against a float64 base), empty and 0-d ones, an int
    tensor and a bool one."""
    rng = np.random.default_rng(seed)
    shapes = {"h": (3, 5), "f": (200,), "d": (4, 6), "j": (7, 3), "e": (0, 3), "s": ()}
    dtypes = {"h": np.float16, "f": np.float32, "d": np.float64, "j": np.float32}
    dtypes.update(e=np.float32, s=np.float32)
    base, update = [], []
    for name, shape in shapes.items():
        start = rng.standard_normal(shape).astype(dtypes[name])
        base.append((name, start.astype(np.float64) if name == "j" else start))
        update.append((name, (start + rng.standard_normal(shape) * 0.1).astype(dtypes[name])))
    base.append(("n", np.arange(5, dtype=np.int32)))
    update.append(("n", rng.integers(-9, 9, 5).astype(np.int32)))
    update.append(("b", rng.random(4) < 0.5))
    return base, update


@pytest.mark.parametrize(("values", "compress"), [("q2", False), ("q5", True), ("q8", False)])
def test_lazy_decode_rebuilds_what_decode_gives_bit_for_bit(values: str, compress: bool) -> None:
    base, update = _mixed_model(5)
    codec = SparseDeltaCodec(0.3, values, seed=2, compress=compress)
    body = _body(codec, update, holding(1, base))
    dense = codec.decode(bytearray(body), holding(1, base))
    lazy = codec.decode_lazily(bytearray(body), holding(1, base))
    rebuilt = set()
    for (name, want), (_, got) in zip(dense, lazy, strict=True):
        if isinstance(got, np.ndarray):
            assert got.dtype == want.dtype and got.tobytes() == want.tobytes(), name
            continue
        rebuilt.add(name)
        assert got.dense().dtype == want.dtype and got.dense().tobytes() == want.tobytes()
        flat, n = want.reshape(-1), want.size
        for start, stop in [(0, 3), (2, 9), (n - 1, n + 4), (-3, 2)]:
            part = got.rebuild(start, stop)
            assert part.tobytes() == flat[max(0, start) : max(0, stop)].tobytes(), (start, stop)
    assert rebuilt == {"h", "f", "d", "j", "e", "s"}


def test_compression_gives_the_same_tensors_in_fewer_bytes() -> None:
    rng = np.random.default_rng(6)
    base = rng.standard_normal(200_000).astype(np.float32)
    update = base + rng.standard_normal(200_000).astype(np.float32) * 0.01
    for values in ["ternary", "float16", "q4"]:
        decoded, sizes = [], []
        for compress in (False, True):
            codec = SparseDeltaCodec(0.05, values, seed=8, compress=compress)
            body = _body(codec, [("w", update)], holding(1, [("w", base)]))
            assert _open(body)[0]["format_version"] == (2 if compress else 1)
            decoded.append(codec.decode(bytearray(body), holding(1, [("w", base)]))[0][1])
            sizes.append(len(body))
        assert decoded[0].tobytes() == decoded[1].tobytes(), values
        if values == "ternary":  # random positions and signs: stored as they are
            assert sizes[1] <= sizes[0] + 2
        else:  # float16: ~15% smaller, q4: ~10%
            assert sizes[1] < 0.95 * sizes[0], (values, sizes)


def _hostile(values: str, change: Any, compress: bool = False) -> Any:
    """A valid payload's manifest and blocks to corrupt, and a function decoding them."""
    base = np.zeros(60, np.float32)  # 15 values sent: 4-bit ones have 4 bits of padding
    update = np.linspace(-1, 1, 60, dtype=np.float32)
    codec = SparseDeltaCodec(0.25, values, seed=0, compress=compress)
    manifest, blocks = _open(_body(codec, [("layer.w", update)], holding(1, [("layer.w", base)])))
    manifest, blocks = change(manifest, list(blocks))
    return codec.decode(_repack(manifest, blocks), holding(1, [("layer.w", base)]))


def _set_scale(scale: Any) -> Any:
    def change(manifest: dict[str, Any], blocks: list[Any]) -> Any:
        manifest["tensors"][0]["scale"] = scale
        return manifest, blocks

    return change


def _set_block(index: int, data: bytes) -> Any:
    def change(manifest: dict[str, Any], blocks: list[Any]) -> Any:
        blocks[index] = (blocks[index][0], np.frombuffer(data, np.uint8))
        return manifest, blocks

    return change


@pytest.mark.parametrize(
    ("values", "change", "message"),
    [
        ("q4", _set_scale([0.0, math.inf]), "scale of 'layer.w'"),
        ("q4", _set_scale([math.nan, 1.0]), "scale of 'layer.w'"),
        ("q4", _set_scale([1.0, 0.5]), "low <= high"),
        ("q4", _set_scale([-1.0, 0.5]), "low <= high"),
        ("q4", _set_scale(0.5), "scale of 'layer.w'"),
        ("q4", _set_scale([0.0, 1.0, 2.0]), "scale of 'layer.w'"),
        ("q4", _set_scale([0, 1]), "scale of 'layer.w'"),
        ("q4", _set_scale([0.0, 1e300]), "overflows"),
        ("q4", _set_block(1, b"\x00" * 7), "7 bytes of 4-bit values for 15"),
        ("q4", _set_block(1, b"\x00" * 9), "9 bytes of 4-bit values for 15"),
        ("q3", _set_block(1, b"\x00" * 5 + b"\x01"), "padding"),
        ("q4", _set_block(1, b"\x00" * 7 + b"\x01"), "padding"),
        ("q8", _set_block(1, b""), "0 bytes of 8-bit values"),
    ],
)
def test_hostile_quantized_payloads_are_decode_errors_naming_the_tensor(
    values: str, change: Any, message: str
) -> None:
    with pytest.raises(DecodeError, match=message) as caught:
        _hostile(values, change)
    assert "layer.w" in str(caught.value)


def _frame(data: bytes) -> bytes:
    return b"\x01" + zstandard.ZstdCompressor().compress(data)


@pytest.mark.parametrize(
    ("index", "data", "message"),
    [
        (1, b"", "no valid header"),
        (1, b"\x07" + b"\x00" * 8, "no valid header"),
        (1, _frame(b"\x00" * 9), "states 9 bytes, not 8"),  # q4: 15 values in 8 bytes
        (1, _frame(b"\x00" * 8) + b"more", "followed"),
        (1, _frame(b"\x00" * 8)[:-2], "decompress|cut short"),
        (
            1,
            b"\x01" + zstandard.ZstdCompressor(write_content_size=False).compress(b"\0" * 8),
            "size",
        ),
        (1, b"\x01not a frame", "no zstd frame"),
        (0, _frame(b"\x00" * 11), "more than 10"),  # positions: at most a bitmap + 2
        (0, b"\x00" + b"\x00" * 8, "bitmap marks 0 values, not 15"),
        (0, b"\x00" + b"\x00" * 9, "bitmap of 9 bytes for 60"),
    ],
)
def test_hostile_compressed_blocks_are_decode_errors(index: int, data: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        _hostile("q4", _set_block(index, data), compress=True)


def test_the_value_codings_and_bad_names() -> None:
    assert {f"q{b}": b for b in range(2, 9)}.items() <= VALUE_CODINGS.items()
    assert VALUE_CODINGS["ternary"] == 1 and VALUE_CODINGS["float16"] == 16
    for name in ("q1", "q9", "int4", "q"):
        with pytest.raises(ValueError, match="values"):
            SparseDeltaCodec(0.1, name)


# Payloads written by the codec before the q* codings and compression (format version 1,
# ternary and float16 values): they decode as they did.
_OLD = {
    "ternary": (
        "eNqlkTFLw0AYhpNYsCi4CS666OhiC9rNugv6D8o1/ZKGJnfH3bUlmyDaWRRxbKFJ6NLJxUXcpU4OTv4Bf4FTPcylklCl"
        "mINbDp7n++59zwOTNMCMPG5TZLbGFmEeErUOMO4QbEQCMCeM314OMfIg0jhFjEPQED6FoO1gUQl4E1G4mug7IbEsDkIL"
        "cd0XwOVLYDKzXHrZXj9ajQWD7hxUV+BErypUV+DW2t3GQuBZBnxwHn0FNv8EnzJg4fUYFgENLQMO38ebCsRzwOIMTP5Y"
        "VODNwehkhVZ2tX+di7i/MO4lU58+riMONWTbDGwkYCnsILcNXLbKMGJ+0u51L5VxZLkEiXIpWX3oyRFqwqBVGFHCHSH1"
        "PKw7wkM04CZy4fnwI16pl4ovlu3tK1khLTN+lb2lZEmkMtHZXsa3Kug2iStN2o+prxyL5Hev5TunOfl+Tr6ak1+W93M6"
        "nX4B9o0pDg=="
    ),
    "float16": (
        "eNqlkT9Lw0AYxi8xYBedHdRJHKW2Ujv2AwgOfoByTd+koUku5L22dBP801kUcXBooUmoQydHh24OUie/hZ/AqQZzV2mQ"
        "IO0Lt9zxe57nnvci0Fkd9MhB06N6c2ww36G82gYfLeaqEQcXmY/310OXOhAR9KiPENR514OgZbm8HGCDenAzVfZCZhgI"
        "nIRurcsB45tA9/Vi4X3/4PMyERh0/kAVAU6VikAVAe5uPmxlgLk5eC7AnADPSo87AmxkOk5SjtrHCWSAmgRV+UtNgK/5"
        "7YEA3ayoaiUV9e54dPqkbgzJUnOV7C9M9pJanzKuUYQqNU0fTMphLWxTuwUYGTaj/LAkt3vbW+g4eS4WZPShE1sIh0FT"
        "G3kMLR7LY1izuEO9AHVqw5uM1FuoT3rJAhfF1H+KyUrjRue51B+poNNgdqxEfpX6KY2seSYrzhF5IXkyWRbvr+pfXu0L"
        "6/H5ms1m340TKKM="
    ),
}
_OLD_DECODED = {
    "ternary": {
        "w": [1.34375, -1.0, 1.15625, 0.84375, 1.5, -1.09375, 3.0, 1.0],
        "h": [1.375, 2.0, -3.375, 0.5],
    },
    "float16": {"w": [0.75, -1.0, 1.0, 0.125, 1.5, -2.25, 3.0, 1.0], "h": [1.5, 2.0, -3.25, 0.5]},
}


@pytest.mark.parametrize("values", sorted(_OLD))
def test_payloads_from_before_the_quantized_codings_still_decode(values: str) -> None:
    base: list[tuple[str, np.ndarray]] = [
        ("w", np.array([0.5, -1.0, 2.0, 0.0, 1.5, -0.25, 3.0, 1.0], np.float32)),
        ("h", np.array([1.0, 2.0, -3.0, 0.5], np.float16)),
        ("n", np.array([1, 2], np.int32)),
    ]
    body = bytearray(zlib.decompress(base64.b64decode(_OLD[values])))
    got = dict(SparseDeltaCodec().decode(body, holding(3, base)))
    assert got["w"].dtype == np.float32 and got["w"].tolist() == _OLD_DECODED[values]["w"]
    assert got["h"].dtype == np.float16 and got["h"].tolist() == _OLD_DECODED[values]["h"]
    assert got["n"].tolist() == [7, -7]


def test_sparse_aggregates_take_quantized_values() -> None:
    """The server's ``aggregate_values`` names a coding of VALUE_CODINGS: q4 steps decode
    to the aggregate they publish."""
    rng = np.random.default_rng(9)
    previous: list[tuple[str, np.ndarray]] = [("w", rng.standard_normal((30, 20), np.float32))]
    mean = [("w", previous[0][1] + rng.standard_normal((30, 20), np.float32))]

    def bases(aggregate: int | None) -> list[tuple[str, np.ndarray]]:
        assert aggregate is None  # the initial model
        return previous

    step = sparse_step(mean, None, bases, {}, 0.1, "q4")
    ((_, published),) = step.aggregate
    assert int((published != previous[0][1]).sum()) <= 60
    ((_, again),) = SparseDeltaCodec().decode(bytearray(step.payload), CodecContext(bases=bases))
    assert again.tobytes() == published.tobytes()
    change = (mean[0][1] - previous[0][1]).reshape(-1)
    delivered = (published - previous[0][1]).reshape(-1)
    np.testing.assert_allclose(delivered + step.residual["w"], change, atol=1e-5)
