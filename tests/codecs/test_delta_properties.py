"""Properties of the ``delta`` codec: every tensor comes back bit for bit, whatever its base.

Tensors are small, so the tests patch the chunk size down to a few bytes at times: the
multi-chunk paths (frames coded on the worker threads, reassembled in order) then run on
tensors of a few values, as they do on megabytes of them.
"""

from __future__ import annotations

from unittest import mock

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fma_connect.codecs import byte_planes
from fma_connect.codecs.context import CodecContext
from fma_connect.codecs.xor_delta import XorDeltaCodec
from fma_connect.testing import holding, lossless_dtypes, to_wire_and_back

CODEC = XorDeltaCodec()
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
#: Bytes per chunk: the format's own, or a few values' worth.
CHUNKS = st.sampled_from([byte_planes.CHUNK_BYTES, 16, 48, 256])
SHAPES = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=7)


@st.composite
def changed(draw: st.DrawFn, base: np.ndarray) -> np.ndarray:
    """``base`` with a drawn share of its values' bits changed (none, a few, most, all)."""
    density = draw(st.sampled_from([0.0, 0.02, 0.1, 0.5, 0.95, 1.0]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    flat = np.ascontiguousarray(base).reshape(-1).view(np.uint8)
    raw = flat.reshape(base.size, base.dtype.itemsize).copy()
    rows = rng.random(base.size) < density
    flips = rng.integers(0, 256, raw.shape, dtype=np.uint8)
    if base.dtype.kind == "b":
        flips[:] = 0
    else:  # low bits mostly, as training changes them; any bits at times
        flips &= np.uint8(draw(st.sampled_from([0x0F, 0xFF])))
    flips[:, 0] |= 1  # a changed value does change
    raw[rows] ^= flips[rows]
    return raw.reshape(-1).view(base.dtype).reshape(base.shape)


@st.composite
def arrays(draw: st.DrawFn) -> np.ndarray:
    """An array of any lossless dtype and small shape, of random bits."""
    dtype = draw(st.sampled_from(lossless_dtypes()))
    shape = draw(SHAPES)
    count = int(np.prod(shape, dtype=np.int64))
    bits = draw(hnp.arrays(np.uint8, count * dtype.itemsize))
    if dtype.kind == "b":
        return (bits.reshape((*shape, dtype.itemsize))[..., 0] & 1).astype(bool)
    array: np.ndarray = bits.view(dtype).reshape(shape)
    return array


def _same(sent: list[tuple[str, np.ndarray]], back: list[tuple[str, np.ndarray]]) -> None:
    assert [name for name, _ in back] == [name for name, _ in sent]
    for (name, before), (_, after) in zip(sent, back, strict=True):
        assert after.dtype == before.dtype and after.shape == before.shape, name
        assert after.tobytes() == before.tobytes(), f"{name!r}: bits differ"


@FAST
@given(st.lists(arrays(), min_size=1, max_size=4), st.data(), CHUNKS)
def test_updates_against_their_base_round_trip_bit_for_bit(
    bases: list[np.ndarray], data: st.DataObject, chunk: int
) -> None:
    base = [(f"t{i}", array) for i, array in enumerate(bases)]
    sent = [(name, data.draw(changed(array))) for name, array in base]
    with mock.patch.object(byte_planes, "CHUNK_BYTES", chunk):
        _same(sent, to_wire_and_back(CODEC, sent, context=holding(4, base)))


@FAST
@given(st.lists(arrays(), min_size=1, max_size=4), st.data(), CHUNKS)
def test_bases_that_do_not_match_still_round_trip(
    sent_arrays: list[np.ndarray], data: st.DataObject, chunk: int
) -> None:
    sent = [(f"t{i}", array) for i, array in enumerate(sent_arrays)]
    base = []
    for name, array in sent:
        kind = data.draw(st.sampled_from(["missing", "other shape", "other dtype", "same"]))
        if kind == "same":
            base.append((name, array.copy()))  # identical: nothing changed
        elif kind == "other shape":
            base.append((name, np.zeros(array.size + 1, array.dtype)))
        elif kind == "other dtype":
            other = np.int8 if array.dtype != np.int8 else np.uint16
            base.append((name, np.zeros(array.shape, other)))
    with mock.patch.object(byte_planes, "CHUNK_BYTES", chunk):
        _same(sent, to_wire_and_back(CODEC, sent, context=holding(4, base)))
        _same(sent, to_wire_and_back(CODEC, sent, context=CodecContext()))  # no base at all


@FAST
@given(arrays(), st.data(), CHUNKS)
def test_damaged_or_truncated_bodies_decode_to_what_was_sent_or_a_decode_error(
    base: np.ndarray, data: st.DataObject, chunk: int
) -> None:
    from fma_connect import DecodeError

    sent = [("w", data.draw(changed(base)))]
    context = holding(4, [("w", base)])
    with mock.patch.object(byte_planes, "CHUNK_BYTES", chunk):
        body = b"".join(bytes(memoryview(c).cast("B")) for c in CODEC.encode(sent, context))
        cut = data.draw(st.integers(0, len(body) - 1))
        flip = data.draw(st.integers(0, len(body) - 1))
        damaged = bytearray(body)
        damaged[flip] ^= 1 << data.draw(st.integers(0, 7))
        for payload in (body[:cut], bytes(damaged)):
            try:
                back = CODEC.decode(payload, context)
            except DecodeError:
                continue
            _same(sent, back)
