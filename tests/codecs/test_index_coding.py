"""Position sets in few bits: bitmap, Elias-Fano, Rice and delta-varint, the smallest sent."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fma_connect import DecodeError, EncodeError
from fma_connect.codecs.index_coding import (
    BITMAP,
    ELIAS_FANO,
    RICE,
    VARINT,
    decode_positions,
    encode_as,
    encode_positions,
)

KINDS = (BITMAP, ELIAS_FANO, RICE, VARINT)


@st.composite
def position_sets(draw: st.DrawFn, most: int = 5000) -> tuple[np.ndarray, int]:
    """Sorted distinct positions below n: spread at random, or in runs."""
    n = draw(st.integers(1, most))
    if draw(st.booleans()):
        chosen = draw(st.sets(st.integers(0, n - 1), max_size=min(n, 300)))
    else:
        starts = draw(st.lists(st.integers(0, n - 1), max_size=20))
        run = draw(st.integers(1, 40))
        chosen = {p for s in starts for p in range(s, min(n, s + run))}
    return np.array(sorted(chosen), dtype=np.int64), n


def _gaps(positions: np.ndarray) -> list[int]:
    listed = [int(p) for p in positions]
    return [p - q - 1 for p, q in zip(listed, [-1, *listed[:-1]], strict=False)]


def _today(positions: np.ndarray, n: int) -> str:
    """The choice before Rice and delta-varint: the bitmap if n is at most Elias-Fano's bits."""
    k = positions.size
    low = max(0, (n // k).bit_length() - 1)
    return BITMAP if n <= k * low + k + (n >> low) + 1 else ELIAS_FANO


@given(position_sets())
def test_positions_come_back_in_the_smaller_coding(case: tuple[np.ndarray, int]) -> None:
    positions, n = case
    kind, coded = encode_positions(positions, n)
    assert decode_positions(kind, coded, positions.size, n).tolist() == positions.tolist()
    bitmap_bytes = -(-n // 8)
    assert len(coded) <= bitmap_bytes + 1
    if positions.size and kind != BITMAP:  # about 2 + log2(n / k) bits a position at most
        assert 8 * len(coded) <= positions.size * (3 + math.log2(n / positions.size)) + 16


@given(position_sets(), st.sampled_from(KINDS))
def test_every_coding_round_trips_exactly(case: tuple[np.ndarray, int], kind: str) -> None:
    positions, n = case
    decoded = decode_positions(kind, encode_as(kind, positions, n), positions.size, n)
    assert decoded.dtype == np.int64 and decoded.tolist() == positions.tolist()


@given(position_sets())
def test_the_choice_is_the_smallest_and_keeps_todays_on_ties(case: tuple[np.ndarray, int]) -> None:
    positions, n = case
    kind, coded = encode_positions(positions, n)
    assert coded == encode_as(kind, positions, n)
    sizes = {other: len(encode_as(other, positions, n)) for other in KINDS}
    if not positions.size:
        assert kind == ELIAS_FANO and coded == b""
        return
    today = _today(positions, n)
    if kind in (BITMAP, ELIAS_FANO):
        assert kind == today and min(sizes[RICE], sizes[VARINT]) >= sizes[today]
    else:
        assert len(coded) < sizes[today] and len(coded) <= min(sizes[RICE], sizes[VARINT])
    # Today's rule compares bits, not bytes: Elias-Fano can be a rounding byte over the bitmap.
    assert len(coded) <= min(sizes.values()) + (kind == ELIAS_FANO)


@given(position_sets())
def test_the_sizes_are_the_closed_forms(case: tuple[np.ndarray, int]) -> None:
    positions, n = case
    k, gaps = positions.size, _gaps(positions)
    assert len(encode_as(BITMAP, positions, n)) == -(-n // 8)
    if not k:
        assert all(encode_as(kind, positions, n) == b"" for kind in KINDS[1:])
        return
    low = max(0, (n // k).bit_length() - 1)
    elias_fano = -(-k * low // 8) + -(-(k + (n >> low) + 1) // 8)
    assert len(encode_as(ELIAS_FANO, positions, n)) == elias_fano
    rice = encode_as(RICE, positions, n)

    def rice_bytes(r: int) -> int:
        return 1 + -(-(k * (r + 1) + sum(g >> r for g in gaps)) // 8)

    assert len(rice) == rice_bytes(rice[0]) == min(rice_bytes(r) for r in range(40))
    varint = sum(max(1, -(-g.bit_length() // 7)) for g in gaps)
    assert len(encode_as(VARINT, positions, n)) == varint


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n", [1, 2, 9, 1000])
def test_empty_full_and_single_sets_in_every_coding(kind: str, n: int) -> None:
    for positions in (np.arange(0), np.arange(n), np.array([n - 1]), np.array([0])):
        coded = encode_as(kind, positions, n)
        assert decode_positions(kind, coded, positions.size, n).tolist() == positions.tolist()
    assert encode_positions(np.arange(n), n)[0] == BITMAP  # every value: the bitmap


@pytest.mark.parametrize("kind", [ELIAS_FANO, RICE, VARINT])  # a bitmap of 2^45 bits: 4 TiB
@pytest.mark.parametrize("n", [2**20, 2**33, 2**45])
def test_fields_of_every_width_round_trip(kind: str, n: int) -> None:
    # Elias-Fano's low bits and Rice's remainders 17 to 43 bits wide, varints of 7 bytes.
    positions = np.array([0, 3, n // 3, n // 2 + 1, n - 1], dtype=np.int64)
    coded = encode_as(kind, positions, n)
    assert decode_positions(kind, coded, positions.size, n).tolist() == positions.tolist()
    kind, coded = encode_positions(positions, n)
    assert decode_positions(kind, coded, positions.size, n).tolist() == positions.tolist()


@given(st.sets(st.integers(0, 2**45 - 1), min_size=1, max_size=200), st.sampled_from(KINDS[1:]))
def test_positions_spread_over_2_to_the_45_round_trip(chosen: set[int], kind: str) -> None:
    positions, n = np.array(sorted(chosen), dtype=np.int64), 2**45
    coded = encode_as(kind, positions, n)
    assert decode_positions(kind, coded, positions.size, n).tolist() == positions.tolist()


def test_rice_takes_half_a_bit_a_position_off_elias_fano() -> None:
    n, k = 1_000_000, 10_000
    positions = np.sort(np.random.default_rng(0).choice(n, k, replace=False))
    kind, coded = encode_positions(positions, n)
    elias_fano = len(encode_as(ELIAS_FANO, positions, n))
    assert 8 * elias_fano / k < 2 + math.log2(n / k) + 0.1  # 8.56 bits for 1%
    assert kind == RICE and 8 * (elias_fano - len(coded)) / k > 0.4  # 8.11 bits
    assert encode_positions(np.arange(n // 2) * 2, n)[0] == BITMAP  # dense: the bitmap


def test_runs_and_strides_go_to_the_gap_codings() -> None:
    n = 1_000_000
    rng = np.random.default_rng(0)
    starts = np.sort(rng.choice(n // 64, n // 50 // 64, replace=False)) * 64
    runs = (starts[:, None] + np.arange(64)).reshape(-1)
    kind, coded = encode_positions(runs, n)
    assert kind == RICE and len(coded) < len(encode_as(ELIAS_FANO, runs, n))
    stride = np.arange(0, n, 100)  # every gap 99: one varint byte, Rice's r + 2 = 8 bits
    kind, coded = encode_positions(stride, n)
    assert kind == VARINT and len(coded) == stride.size == len(encode_as(RICE, stride, n)) - 1


def test_old_payloads_are_the_same_bytes() -> None:
    """Bitmap and Elias-Fano payloads as written before Rice and delta-varint existed."""
    for kind, positions, n, hexed in [
        (ELIAS_FANO, [1, 5, 6, 40, 99], 100, "156830e420"),
        (BITMAP, [0, 1, 2, 3, 5, 7], 8, "f5"),
        (ELIAS_FANO, [3, 1000, 70000, 2**33], 2**34, "00000003000003e80001117000000000e400"),
    ]:
        assert encode_as(kind, np.array(positions), n).hex() == hexed
        assert decode_positions(kind, bytes.fromhex(hexed), len(positions), n).tolist() == positions


def test_unsorted_positions_keep_the_codings_that_refuse_them() -> None:
    kind, coded = encode_positions(np.array([5, 3]), 20_000)
    assert kind == ELIAS_FANO
    with pytest.raises(DecodeError, match="not distinct"):
        decode_positions(kind, coded, 2, 20_000)
    for gap_coding in (RICE, VARINT):
        with pytest.raises(EncodeError, match="sorted distinct"):
            encode_as(gap_coding, np.array([4, 4, 9]), 20)
    with pytest.raises(EncodeError, match="unknown"):
        encode_as("huffman", np.array([1]), 2)


@pytest.mark.parametrize(
    ("kind", "data", "k", "n"),
    [
        (BITMAP, b"\x01", 2, 8),
        (BITMAP, b"", 0, 8),
        ("huffman", b"", 0, 1),
        (ELIAS_FANO, b"x", 0, 9),
    ],
)
def test_malformed_position_codings_are_decode_errors(
    kind: str, data: bytes, k: int, n: int
) -> None:
    with pytest.raises(DecodeError):
        decode_positions(kind, data, k, n)


_N = 1000
_SOME = np.array([2, 3, 50, 51, 52, 400, 999])  # gaps 2 0 46 0 0 347 598
_RICE = encode_as(RICE, _SOME, _N)  # r = 7: 7 * 7 bits of remainders, 7 + 6 of unary
_VARINT = encode_as(VARINT, _SOME, _N)  # 02 00 2e 00 00 db02 d604


@pytest.mark.parametrize(
    ("kind", "data", "k", "n", "message"),
    [
        (RICE, b"", 7, _N, "lack their parameter byte"),
        (RICE, _RICE[:-1], 7, _N, "unary part holds 5 quotients, not 7"),
        (RICE, _RICE + b"\x00", 7, _N, "10 bytes for 7 of 1000 values with r = 7: 8 to 9 expected"),
        (RICE, b"\x00\x80\x00", 1, _N, "3 bytes whose code ends in byte 2"),
        (RICE, _RICE, 6, _N, "9 bytes for 6 of 1000 values with r = 7: 7 to 8 expected"),
        (RICE, _RICE, 8, _N, "unary part holds 2 quotients, not 8"),
        (RICE, bytes([9]) + _RICE[1:], 7, _N, "parameter 9 for 7 of 1000 values: at most 8"),
        (RICE, b"\x00\x00\x08", 1, 10, "reach 12, out of range for 10 values"),
        (RICE, _RICE, 7, 999, "reach 999, out of range for 999 values"),
        (RICE, b"\x00" + b"\x00" * 10**6 + b"\x01", 1, 10, "2 to 3 expected"),  # not unpacked
        (RICE, b"\x00\x00", 0, 5, "empty position set"),
        (RICE, b"\x00\x80", 6, 5, "6 positions cannot be distinct below 5"),
        (VARINT, _VARINT[:-1], 7, _N, "end inside a varint"),
        (VARINT, _VARINT + b"\x81", 7, _N, "end inside a varint"),
        (VARINT, _VARINT + b"\x01", 7, _N, "hold 8 varints, not 7"),
        (VARINT, _VARINT, 6, _N, "hold 7 varints, not 6"),
        (VARINT, _VARINT, 8, _N, "hold 7 varints, not 8"),
        (VARINT, b"\x80\x80\x01\x00", 2, _N, "a delta-varint of 3 bytes: gaps below 1000 take 2"),
        (VARINT, b"\x81\x00", 1, _N, "ends in a zero byte"),
        (VARINT, b"\x02\xe8\x07", 2, _N, "reach 1003, out of range for 1000"),
        (VARINT, _VARINT, 7, 999, "reach 999, out of range"),
        (VARINT, b"\x00" * 10**6, 1, _N, "1000000 bytes for 1 of 1000 values: 1 to 2 expected"),
    ],
)
def test_malformed_rice_and_varint_codings_are_decode_errors(
    kind: str, data: bytes, k: int, n: int, message: str
) -> None:
    with pytest.raises(DecodeError, match=message):
        decode_positions(kind, data, k, n)


def test_varint_sums_that_pass_2_to_the_64_are_refused() -> None:
    # Nine-byte gaps of 2^62 - 1 below n = 2^63 - 1: four of them wrap a uint64, and the
    # fifth position lands below n again.
    gap = b"\xff" * 8 + b"\x3f"
    with pytest.raises(DecodeError, match="2\\^64"):
        decode_positions(VARINT, gap * 5, 5, 2**63 - 1)
