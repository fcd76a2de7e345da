"""The ``delta`` codec: bit-exact updates as their XOR with the base aggregate, compressed."""

from __future__ import annotations

import base64
import struct
import zlib
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np
import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from fma_connect import DecodeError, EncodeError
from fma_connect.codecs.context import CodecContext, MissingBaseError
from fma_connect.codecs.index_coding import BITMAP, ELIAS_FANO, RICE, VARINT, encode_positions
from fma_connect.codecs.msgpack_numpy import MsgpackCodec
from fma_connect.codecs.xor_delta import XorDeltaCodec
from fma_connect.exceptions import TooManyTensorsError
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


# A version-1 body, as the codec wrote it before version 2: "w" (float32, xor against
# aggregate 3), "b" (int16, xor), "new" (float64 0-d, raw, no base tensor).
_VERSION_1 = (
    "eNprXpqcn5KavDy3OL0gMTl7XVp+UW5iSXxZalFxZn4e0/KS1Lzi/KLiKW1L8hJzU5cxpKTmlCQuTSmpLEhdWpqZV2Kx"
    "tDgjsSB14pkzy/LT0opTSxiW5SVVlqQWnzmzNLko2djo3Hy5j1MhuheWY9HoDdV3lhGm0xuqMbPrZxFUYxIWjfxwjQ1Q"
    "jfxQjeEi/UchGhfnpWKzUxCu9QBUqyBUa4p/+PQNcprFDMSCFkj4LQWHC1roMa5LSixOjU9MTy9KTU8sSWWGhebkVpTw"
    "WJ6Wk59YYmwEcd0kFrYluUAzF1fkF0Fd9TCBO7gVNSSAvjE0g3qHGV29tccSl1a0AIBYYmYC0TMBoqUosRyqpXxS9F8G"
    "MoDGVv2/CgmiTAxTmPPzheq6Z34/et499ujp6qS0ResePdsHpITYWucePn5IQUFRPfFxooCAgLBBoQGQamYE6mdksGJg"
    "YnA4aM6swUC2/WyGIJOYyNbP4QjjsjgAANb09iY="
)


def test_a_version_1_body_still_decodes() -> None:
    body = zlib.decompress(base64.b64decode(_VERSION_1))
    weights = (np.arange(24, dtype=np.float32) / 7).reshape(4, 6)
    (w, b, new) = CODEC.decode(body, holding(3, [("w", weights), ("b", np.zeros(3, np.int16))]))
    assert w[1].tobytes() == (weights + np.float32(0.001)).tobytes()
    assert b[1].tolist() == [0, 1, 2] and b[1].dtype == np.int16
    assert new[1].shape == () and new[1].dtype == np.float64 and float(new[1]) == 2.5


def _parts(body: bytes) -> tuple[dict[str, Any], list[tuple[str, np.ndarray]]]:
    """A delta body's manifest and its blocks (copies, free to change)."""
    blocks = MsgpackCodec().decode(body)
    manifest = msgpack.unpackb(blocks[0][1].tobytes())
    return manifest, [(name, block.copy()) for name, block in blocks[1:]]


def _repacked(manifest: dict[str, Any], blocks: list[tuple[str, np.ndarray]]) -> bytes:
    packed = np.frombuffer(msgpack.packb(manifest), np.uint8)
    chunks = MsgpackCodec().encode([("\u0000delta", packed), *blocks])
    return b"".join(bytes(memoryview(c).cast("B")) for c in chunks)


def _aggregate(changed: float, size: int = 1_000_000) -> tuple[np.ndarray, np.ndarray]:
    """A base, and a new aggregate with ``changed`` of its values moved a little."""
    rng = np.random.default_rng(11)
    base = (0.05 * rng.standard_normal(size)).astype(np.float32)
    new = base.copy()
    where = rng.choice(size, int(changed * size), replace=False)
    new[where] += (0.001 * rng.standard_normal(where.size)).astype(np.float32)
    return base, new


@pytest.mark.parametrize(("changed", "most"), [(0.01, 4.0), (0.03, 3.8), (0.2, 3.5)])
def test_an_aggregate_that_changed_a_few_values_costs_about_4_bytes_a_change(
    changed: float, most: float
) -> None:
    base, new = _aggregate(changed)
    body = _body([("w", new)], holding(7, [("w", base)]))
    assert _parts(body)[0]["tensors"][0]["mode"] == "sparse"
    assert len(body) / int(changed * base.size) <= most
    back = CODEC.decode(body, holding(7, [("w", base)]))
    assert back[0][1].tobytes() == new.tobytes()


def test_an_update_that_changed_every_value_goes_as_a_dense_xor() -> None:
    base, update = _trained(6, 0.01)
    manifest, blocks = _parts(_body([("w", update)], holding(7, [("w", base)])))
    assert manifest["format_version"] == 2 and manifest["tensors"][0]["mode"] == "xor"
    assert len(blocks) == 1  # 800 kB: one chunk


def test_a_tensor_of_several_chunks_round_trips_and_each_chunk_is_a_block() -> None:
    rng = np.random.default_rng(8)
    base = rng.standard_normal((3, 500_000), dtype=np.float32)  # 6 MB: two 4 MiB chunks
    update = base + np.float32(1e-3) * rng.standard_normal(base.shape, dtype=np.float32)
    tensors = [("w", update), ("plain", update.astype(np.float64)[:, :200_000])]
    body = _body(tensors, holding(7, [("w", base)]))
    assert [name for name, _ in _parts(body)[1]] == ["w", "w", "plain", "plain"]
    back = CODEC.decode(body, holding(7, [("w", base)]), max_tensors=2)
    assert [b.tobytes() for _, b in back] == [a.tobytes() for _, a in tensors]
    with pytest.raises(TooManyTensorsError):
        CODEC.decode(body, holding(7, [("w", base)]), max_tensors=1)


#: A change to a body's manifest and blocks (in place).
Change = Callable[[dict[str, Any], list[tuple[str, np.ndarray]]], object]


def _sparse_body() -> tuple[bytes, np.ndarray, np.ndarray]:
    base, new = _aggregate(0.01, 20_000)
    return _body([("w", new)], holding(7, [("w", base)])), base, new


def _damaged(change: Change) -> bytes:
    body, _, _ = _sparse_body()
    manifest, blocks = _parts(body)
    assert manifest["tensors"][0]["mode"] == "sparse"
    change(manifest, blocks)
    return _repacked(manifest, blocks)


def _prefix(blocks: list[tuple[str, np.ndarray]], kind: int, count: int) -> None:
    name, head = blocks[0]
    blocks[0] = (
        name,
        np.concatenate([np.frombuffer(struct.pack("<BQ", kind, count), np.uint8), head[9:]]),
    )


def _positions(blocks: list[tuple[str, np.ndarray]], positions: list[int], n: int) -> None:
    kind, coded = encode_positions(np.array(positions), n)
    head = (
        struct.pack("<BQ", [BITMAP, ELIAS_FANO, RICE, VARINT].index(kind), len(positions)) + coded
    )
    blocks[0] = (blocks[0][0], np.frombuffer(head, np.uint8))


def _frame(blocks: list[tuple[str, np.ndarray]], at: int, data: bytes) -> None:
    blocks[at] = (blocks[at][0], np.frombuffer(zstandard.compress(data), np.uint8))


HOSTILE: dict[str, tuple[Change, str]] = {
    "unknown position kind": (lambda m, b: _prefix(b, 7, 200), "positions of kind 7"),
    "more changes than values": (lambda m, b: _prefix(b, 1, 20_001), "20001 of 20000 values"),
    "count other than coded": (lambda m, b: _prefix(b, 1, 199), "Elias-Fano positions of"),
    "positions out of order": (lambda m, b: _positions(b, [5, 3], 20_000), "not distinct"),
    "a repeated position": (lambda m, b: _positions(b, [4, 4, 9], 20_000), "not distinct"),
    "a position past the end": (lambda m, b: _positions(b, [19_999, 20_003], 20_000), "range"),
    "a bitmap of another size": (
        lambda m, b: _prefix(b, 0, 200),  # Elias-Fano bytes read as a bitmap
        "bitmap of",
    ),
    "positions block cut short": (
        lambda m, b: b.__setitem__(0, (b[0][0], b[0][1][:5])),
        "positions block is truncated",
    ),
    "values frame cut short": (
        lambda m, b: b.__setitem__(1, (b[1][0], b[1][1][:-7])),
        "does not decompress",
    ),
    "values frame holding more than declared": (
        lambda m, b: _frame(b, 1, bytes(4 * 200 + 4)),
        "states 804 bytes for a chunk of 800 bytes",
    ),
    "values frame missing": (lambda m, b: b.pop(1), "ends before the blocks"),
    "a block no tensor uses": (lambda m, b: b.append(b[1]), "1 blocks no tensor uses"),
    "sparse mode in a version-1 body": (
        lambda m, b: m.__setitem__("format_version", 1),
        "malformed",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_sparse_body_is_a_decode_error(case: str) -> None:
    change, message = HOSTILE[case]
    body = _damaged(change)
    _, base, _ = _sparse_body()
    with pytest.raises(DecodeError, match=message):
        CODEC.decode(body, holding(7, [("w", base)]))


def test_a_frame_claiming_more_than_its_chunk_is_refused_before_it_is_decompressed() -> None:
    # zstd allocates what a frame's header states (1 GiB here), whatever max_output_size.
    body = _body([("w", np.zeros(1024, np.float32))], CodecContext())
    manifest, blocks = _parts(body)
    stream = zstandard.ZstdCompressor().compressobj(size=1 << 30)
    frame = stream.compress(bytes(4096)) + stream.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
    blocks[0] = ("w", np.frombuffer(frame, np.uint8))
    with pytest.raises(DecodeError, match="states 1073741824 bytes for a chunk of 4096 bytes"):
        CODEC.decode(_repacked(manifest, blocks), CodecContext())
