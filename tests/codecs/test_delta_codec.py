"""The ``delta`` codec: bit-exact updates as their XOR with the base aggregate, compressed."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fma_connect import DecodeError, EncodeError
from fma_connect.codecs.context import CodecContext, MissingBaseError
from fma_connect.codecs.msgpack_numpy import MsgpackCodec
from fma_connect.codecs.xor_delta import XorDeltaCodec
from fma_connect.testing import holding, to_wire_and_back

CODEC = XorDeltaCodec()


def _body(tensors: list[tuple[str, np.ndarray]], context: CodecContext) -> bytes:
    return b"".join(bytes(memoryview(c).cast("B")) for c in CODEC.encode(tensors, context))


def _trained(seed: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """A base and an update a round of training away from it (relative change ``scale``)."""
    rng = np.random.default_rng(seed)
    base = (rng.standard_normal(200_000) * 0.05).astype(np.float32)
    return base, (base + rng.standard_normal(base.size).astype(np.float32) * 0.05 * scale)


def test_an_update_close_to_its_base_costs_far_fewer_bytes_than_msgpack() -> None:
    base, update = _trained(0, 0.01)
    delta = len(_body([("w", update)], holding(7, [("w", base)])))
    whole = sum(memoryview(c).nbytes for c in MsgpackCodec().encode([("w", update)]))
    assert delta < 0.75 * whole
    back = to_wire_and_back(CODEC, [("w", update)], context=holding(7, [("w", base)]))
    assert back[0][1].tobytes() == update.tobytes()


def test_an_update_equal_to_its_base_is_almost_nothing() -> None:
    base, _ = _trained(1, 0.0)
    assert len(_body([("w", base)], holding(7, [("w", base)]))) < 0.01 * base.nbytes


def test_the_payload_names_its_base_and_decoding_asks_for_it() -> None:
    base, update = _trained(2, 0.1)
    asked: list[int | None] = []

    def bases(aggregate: int | None) -> list[tuple[str, np.ndarray]]:
        asked.append(aggregate)
        return [("w", base)]

    body = _body([("w", update)], CodecContext(5, bases))
    assert CODEC.decode(body, CodecContext(bases=bases))[0][1].tobytes() == update.tobytes()
    assert asked == [5, 5]  # once to encode, once to decode


def test_a_delta_against_a_base_not_held_is_a_missing_base_error() -> None:
    base, update = _trained(3, 0.1)
    body = _body([("w", update)], holding(5, [("w", base)]))
    with pytest.raises(MissingBaseError) as missing:
        CODEC.decode(body, holding(6, [("w", base)]))
    assert missing.value.aggregate == 5
    with pytest.raises(MissingBaseError):
        CODEC.decode(body, CodecContext())


def test_a_different_base_is_detected_not_averaged() -> None:
    base, update = _trained(4, 0.1)
    other = base.copy()
    other[123] += 1.0
    body = _body([("w", update)], holding(5, [("w", base)]))
    with pytest.raises(DecodeError, match="does not rebuild what was sent"):
        CODEC.decode(body, holding(5, [("w", other)]))


def test_without_a_base_tensors_travel_whole_and_a_mismatched_base_tensor_is_skipped() -> None:
    base, update = _trained(5, 0.1)
    tensors = [("w", update), ("new", np.arange(5, dtype=np.int16))]
    context = holding(5, [("w", base.astype(np.float64)), ("new", np.zeros(3, np.int16))])
    assert to_wire_and_back(CODEC, tensors, context=context)[1][1].tolist() == [0, 1, 2, 3, 4]
    assert to_wire_and_back(CODEC, tensors)[0][1].tobytes() == update.tobytes()


def test_declared_sizes_beyond_the_bound_are_refused_before_decompressing() -> None:
    zeros = np.zeros(1 << 20, np.float32)  # 4 MiB that compress to a few bytes
    body = _body([("w", zeros)], CodecContext())
    with pytest.raises(DecodeError, match="declares 4,194,304 bytes"):
        XorDeltaCodec(max_output_size=1 << 20).decode(body, CodecContext())


def test_the_reserved_manifest_name_is_refused_on_encode() -> None:
    with pytest.raises(EncodeError, match="reserved"):
        CODEC.encode([("\u0000delta", np.zeros(1))], CodecContext())


def test_a_plain_msgpack_body_or_another_version_is_refused() -> None:
    plain = b"".join(bytes(c) for c in MsgpackCodec().encode([("w", np.zeros(2))]))
    with pytest.raises(DecodeError, match="no manifest"):
        CODEC.decode(plain, CodecContext())
    manifest = {"codec": "delta", "format_version": 9, "base_aggregate": None, "tensors": []}
    packed = np.frombuffer(msgpack.packb(manifest), np.uint8)
    body = b"".join(bytes(c) for c in MsgpackCodec().encode([("\u0000delta", packed)]))
    with pytest.raises(DecodeError, match="format version 9"):
        CODEC.decode(body, CodecContext())


@given(st.integers(0, 2**32 - 1), st.sampled_from([np.float16, np.float32, np.float64, np.int8]))
def test_all_zero_and_random_deltas_round_trip_bit_for_bit(seed: int, dtype: type) -> None:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, size=64, dtype=np.uint8).view(np.dtype(dtype)).copy()
    for update in (
        base.copy(),
        rng.integers(0, 255, size=64, dtype=np.uint8).view(np.dtype(dtype)),
    ):
        back = to_wire_and_back(CODEC, [("t", update)], context=holding(1, [("t", base)]))
        assert back[0][1].tobytes() == update.tobytes() and back[0][1].dtype == update.dtype
