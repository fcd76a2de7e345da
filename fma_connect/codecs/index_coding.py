"""Sets of positions in few bits: a bitmap, Elias-Fano, Rice or delta-varint, the smallest.

A sparse update sends k of a tensor's n values; their positions are a sorted set of k
distinct integers below n, or the k gaps g_i = p_i - p_(i-1) - 1 (p_(-1) = -1) between
them. Four codings, all vectorised in numpy both ways (no loop over the positions):

* **bitmap**: n bits, one per position.
* **Elias-Fano**: each position split into ``low`` low bits, stored as they are, and a
  high part, stored in unary as the gaps between successive high parts: k·low + k +
  (n >> low) + 1 bits in all, with ``low = floor(log2(n / k))``: at most about
  2 + log2(n/k) bits a position.
* **Rice** (Golomb coding with parameter 2^r, as Sparse Ternary Compression uses): a
  byte holding r, then every gap's r low bits (most significant first, as Elias-Fano's
  low part), then every gap's quotient ``g >> r`` in unary (that many 0 bits, then a 1):
  8 + k·(r+1) + Σ(g >> r) bits, with the r that makes that smallest for the actual gaps
  (the size is convex in r: a few sums of ``gaps >> r`` find it).
* **delta-varint**: each gap as an unsigned LEB128 varint (7 bits a byte, low groups
  first, the high bit set on every byte but a value's last): Σ max(1, ⌈bitlen(g)/7⌉)
  bytes.

Rice at r = ``low`` is at least a bit shorter than Elias-Fano before its parameter byte
(its unary part holds Σ(g >> r) ≤ Σg >> r zeros, Elias-Fano's n >> low); the floors save
about half a bit a gap where the gaps are spread (random positions), next to nothing where
a few long gaps hold the sum (runs: a zero gap still costs r + 1 bits). Delta-varint wins
where nearly every gap is just below 128 (an even stride), by Rice's parameter byte.
Measured, in bits a position (n = 1M; random: ``rng.choice(n, k, replace=False)``; runs:
2% in runs of 64 at random multiples of 64; stride: every 100th)::

    share of n      0.1%     1%     2%     5%    10%   runs 2%  stride
    bitmap          1000    100     50     20     10    50.08      100
    Elias-Fano     11.96   8.56   7.56   6.25   5.25    7.57     8.56
    Rice           11.50   8.11   7.10   5.79   4.75    7.53     8.00
    delta-varint   15.09  10.24   8.61   8.01   8.00    8.12     8.00

The bitmap is the smallest from ~40% of n (from ~25% with Elias-Fano alone).
:func:`encode_positions` takes the bitmap when n is at most Elias-Fano's bits, else
Elias-Fano (as it always has), then Rice or delta-varint where one is smaller still in
bytes; the gaps are computed once, the sizes from closed forms and a few sums. 2M random
positions of n = 100M, best of 7 alternating with a memcpy of the 400 MB float32 tensor
they index (into a fresh buffer): encode (choice included) and decode together take
0.67x that memcpy.

:func:`decode_positions` checks what it is given and raises
:class:`~fma_connect.exceptions.DecodeError` on anything a correct encoder cannot have
written, bounding every size by k and n before it allocates.
"""

from __future__ import annotations

import numpy as np

from ..exceptions import DecodeError, EncodeError

__all__ = [
    "BITMAP",
    "ELIAS_FANO",
    "RICE",
    "VARINT",
    "decode_positions",
    "encode_as",
    "encode_positions",
]

BITMAP = "bitmap"
ELIAS_FANO = "elias-fano"
RICE = "rice"
VARINT = "varint"
_GAP_CODINGS = (RICE, VARINT)


def encode_positions(positions: np.ndarray, n: int) -> tuple[str, bytes]:
    """Code sorted distinct ``positions`` (each below ``n``) in the smallest form.

    Positions that are not sorted and distinct (a caller's error) have no gaps to code:
    they get the bitmap or Elias-Fano, as before, whose decoding then refuses them.
    """
    k = positions.size
    if k == 0:
        return ELIAS_FANO, b""
    positions = positions.astype(np.int64, copy=False)
    low = _low_bits(n, k)
    if n <= k * low + k + (n >> low) + 1:
        kind, size = BITMAP, -(-n // 8)
    else:
        kind, size = ELIAS_FANO, _elias_fano_size(n, k, low)
    gaps = _gaps(positions, n)
    r = 0
    if gaps is not None:
        r, bits = _rice_parameter(gaps, int(positions[-1]) + 1 - k)
        if 1 + -(-bits // 8) < size:
            kind, size = RICE, 1 + -(-bits // 8)
        if k < size and _varint_size(gaps, n) < size:  # a varint is a byte at least
            kind = VARINT
    return kind, _encode(kind, positions, n, gaps, r)


def encode_as(kind: str, positions: np.ndarray, n: int) -> bytes:
    """Code sorted distinct ``positions`` (each below ``n``) as ``kind``, whatever its size.

    Raises:
        EncodeError: ``kind`` is not a coding, or a gap coding is given positions that are
            not sorted and distinct.
    """
    if kind not in (BITMAP, ELIAS_FANO, *_GAP_CODINGS):
        raise EncodeError(f"unknown position coding {kind!r}")
    if positions.size == 0 and kind != BITMAP:
        return b""
    positions = positions.astype(np.int64, copy=False)
    gaps, r = None, 0
    if kind in _GAP_CODINGS:
        gaps = _gaps(positions, n)
        if gaps is None:
            raise EncodeError(f"{kind} codes sorted distinct positions only")
        if kind == RICE:
            r = _rice_parameter(gaps, int(positions[-1]) + 1 - positions.size)[0]
    return _encode(kind, positions, n, gaps, r)


def decode_positions(kind: str, data: bytes, k: int, n: int) -> np.ndarray:
    """The ``k`` sorted positions below ``n`` that :func:`encode_positions` coded.

    Raises:
        DecodeError: ``data`` is not such a coding.
    """
    if kind == BITMAP:
        if len(data) != -(-n // 8):
            raise DecodeError(f"position bitmap of {len(data)} bytes for {n} values")
        bits = np.unpackbits(np.frombuffer(data, np.uint8), count=n)
        positions = np.flatnonzero(bits.view(np.bool_))
        if positions.size != k:
            raise DecodeError(f"position bitmap marks {positions.size} values, not {k}")
        return positions
    if kind not in (ELIAS_FANO, *_GAP_CODINGS):
        raise DecodeError(f"unknown position coding {kind!r}")
    if k == 0:
        if data:
            raise DecodeError("an empty position set has no bytes")
        return np.empty(0, np.int64)
    if not 0 < k <= n:
        raise DecodeError(f"{k} positions cannot be distinct below {n}")
    if kind == RICE:
        return _decode_rice(data, k, n)
    if kind == VARINT:
        return _decode_varint(data, k, n)
    low = _low_bits(n, k)
    low_bytes = -(-k * low // 8)
    high_len = k + (n >> low) + 1
    if len(data) != low_bytes + -(-high_len // 8):
        raise DecodeError(f"Elias-Fano positions of {len(data)} bytes for {k} of {n} values")
    raw = np.frombuffer(data, np.uint8)
    high_bits = np.unpackbits(raw[low_bytes:], count=high_len)
    ones = np.flatnonzero(high_bits.view(np.bool_))
    if ones.size != k:
        raise DecodeError(f"Elias-Fano high part holds {ones.size} positions, not {k}")
    positions = ones  # each one's high part, in place: ones - (how many ones before it)
    positions -= np.arange(k)
    positions <<= low
    if low:
        positions |= _read_fields(raw, k, low)
    if positions[-1] >= n or (k > 1 and not (np.diff(positions) > 0).all()):
        raise DecodeError("Elias-Fano positions are not distinct, sorted and in range")
    return positions


def _encode(kind: str, positions: np.ndarray, n: int, gaps: np.ndarray | None, r: int) -> bytes:
    if kind == BITMAP:
        bits = np.zeros(n, np.uint8)
        bits[positions] = 1
        return np.packbits(bits).tobytes()
    if kind == ELIAS_FANO:
        return _elias_fano(positions, n, _low_bits(n, positions.size))
    assert gaps is not None
    return _rice(gaps, r) if kind == RICE else _varint(gaps, n)


def _low_bits(n: int, k: int) -> int:
    return max(0, (n // k).bit_length() - 1)


def _elias_fano_size(n: int, k: int, low: int) -> int:
    return -(-k * low // 8) + -(-(k + (n >> low) + 1) // 8)


def _elias_fano(positions: np.ndarray, n: int, low: int) -> bytes:
    k = positions.size
    high = positions >> low
    high_bits = np.zeros(k + (n >> low) + 1, np.uint8)
    high_bits[high + np.arange(k)] = 1
    parts = [np.packbits(high_bits)]
    if low:
        parts.insert(0, _pack_fields(positions & ((1 << low) - 1), low))
    return b"".join(part.tobytes() for part in parts)


def _gaps(positions: np.ndarray, n: int) -> np.ndarray | None:
    """``p_i - p_(i-1) - 1`` (``p_(-1) = -1``), or None if one is negative.

    In int32 for positions below n < 2^30 (every sum the gap codings take of them stays
    below 2^31): half the memory traffic of int64 in each pass over them.
    """
    small = n < 1 << 30 and positions[0] >= 0 and positions.max() < n  # no gap truncated
    gaps = np.empty(positions.size, np.int32 if small else np.int64)
    gaps[0] = positions[0]
    tail = gaps[1:]
    np.subtract(positions[1:], positions[:-1], out=tail, casting="unsafe")
    np.subtract(tail, 1, out=tail)
    return gaps if gaps.min() >= 0 else None


def _rice_parameter(gaps: np.ndarray, total: int) -> tuple[int, int]:
    """The r that codes ``gaps`` (summing to ``total``) in fewest bits, and those bits
    (without the byte holding r)."""
    k = gaps.size

    def bits(r: int) -> int:
        return k * (r + 1) + int((gaps >> r).sum())

    # From r = floor(log2(mean gap)) downhill: the size is convex in r (r + 1 costs k bits
    # and saves Σ⌈(g >> r) / 2⌉, which shrinks as r grows). Going up to r + 1 saves bits
    # only if Σ(g >> r) > k, so 2^r < the mean gap ≤ (n - k) / k: the decoder's bound.
    r = max(0, (total // k).bit_length() - 1)
    best = bits(r)
    for step in (1, -1):
        moved = False
        while r + step >= 0 and (size := bits(r + step)) < best:
            r, best, moved = r + step, size, True
        if moved:
            break
    return r, best


def _rice(gaps: np.ndarray, r: int) -> bytes:
    k = gaps.size
    quotients = gaps >> r
    # The unary part starts where the k·r remainder bits end, mid-byte when k·r % 8: pack
    # it shifted by that much and merge the byte the two parts share.
    shift = k * r % 8
    ones = np.cumsum(quotients + 1, dtype=gaps.dtype) + (shift - 1)
    unary_bits = np.zeros(int(ones[-1]) + 1, np.uint8)
    unary_bits[ones] = 1
    unary = np.packbits(unary_bits)
    head = np.array([r], np.uint8)
    if not r:
        return head.tobytes() + unary.tobytes()
    fields = _pack_fields(gaps & ((1 << r) - 1), r)
    if shift:
        unary[0] |= fields[-1]
        fields = fields[:-1]
    return b"".join(part.tobytes() for part in (head, fields, unary))


def _decode_rice(data: bytes, k: int, n: int) -> np.ndarray:
    if not data:
        raise DecodeError(f"Rice positions for {k} of {n} values lack their parameter byte")
    raw = np.frombuffer(data, np.uint8)
    r, top = int(raw[0]), ((n - k) // k).bit_length()
    if r > top:
        raise DecodeError(f"Rice parameter {r} for {k} of {n} values: at most {top}")
    # Σ(g >> r) ≤ Σg >> r = (p_last + 1 - k) >> r bounds the unary part before unpacking.
    fewest, most = k * (r + 1), k * (r + 1) + ((n - k) >> r)
    if not 1 + -(-fewest // 8) <= len(data) <= 1 + -(-most // 8):
        raise DecodeError(
            f"Rice positions of {len(data)} bytes for {k} of {n} values with r = {r}: "
            f"{1 + -(-fewest // 8)} to {1 + -(-most // 8)} expected"
        )
    start = 1 + k * r // 8
    unary_bits = np.unpackbits(raw[start:])[k * r % 8 :]
    ones = np.flatnonzero(unary_bits.view(np.bool_))
    if ones.size != k:
        raise DecodeError(f"Rice unary part holds {ones.size} quotients, not {k}")
    used = 1 + -(-(k * r + int(ones[-1]) + 1) // 8)
    if used != len(data):
        raise DecodeError(f"Rice positions of {len(data)} bytes whose code ends in byte {used}")
    remainders = _read_fields(raw[1:], k, r) if r else np.zeros(k, np.int64)
    # Σg, exactly (no int64 overflow: k·2^r ≤ 2(n - k) for the r allowed), before any sum
    # of the gaps themselves can wrap.
    total = ((int(ones[-1]) + 1 - k) << r) + int(remainders.sum(dtype=np.uint64))
    if total > n - k:
        raise DecodeError(f"Rice positions reach {total + k - 1}, out of range for {n} values")
    # p_i = (Σ q up to i) << r + (Σ remainders up to i) + i, in place on two arrays.
    count = np.arange(k)
    positions = ones
    positions -= count
    positions <<= r
    positions += count
    positions += np.cumsum(remainders, dtype=np.int64, out=count)
    return positions


def _varint_width(n: int) -> int:
    """The most bytes a gap below ``n`` takes as a varint."""
    return max(1, -(-(n - 1).bit_length() // 7))


def _varint_sizes(gaps: np.ndarray, n: int) -> np.ndarray:
    sizes = np.ones(gaps.size, np.int64)
    for byte in range(1, _varint_width(n)):
        sizes += gaps >= 1 << 7 * byte
    return sizes


def _varint_size(gaps: np.ndarray, n: int) -> int:
    return gaps.size + sum(
        int(np.count_nonzero(gaps >= 1 << 7 * byte)) for byte in range(1, _varint_width(n))
    )


def _varint(gaps: np.ndarray, n: int) -> bytes:
    sizes = _varint_sizes(gaps, n)
    starts = np.cumsum(sizes) - sizes
    out = np.empty(int(starts[-1] + sizes[-1]), np.uint8)
    # Byte by byte of the values, each pass over the values that have that byte.
    for byte in range(int(sizes.max())):
        if byte:
            more = sizes > byte
            gaps, sizes, starts = gaps[more], sizes[more], starts[more]
        out[starts + byte] = ((gaps >> 7 * byte) & 0x7F) | ((sizes > byte + 1) << 7)
    return out.tobytes()


def _decode_varint(data: bytes, k: int, n: int) -> np.ndarray:
    width = _varint_width(n)
    if not k <= len(data) <= k * width:
        raise DecodeError(
            f"delta-varint positions of {len(data)} bytes for {k} of {n} values: "
            f"{k} to {k * width} expected"
        )
    raw = np.frombuffer(data, np.uint8)
    if raw[-1] >= 0x80:
        raise DecodeError("delta-varint positions end inside a varint (its high bit set)")
    ends = np.flatnonzero(raw < 0x80)
    if ends.size != k:
        raise DecodeError(f"delta-varint positions hold {ends.size} varints, not {k}")
    sizes = np.diff(ends, prepend=-1)
    longest = int(sizes.max())
    if longest > width:
        raise DecodeError(f"a delta-varint of {longest} bytes: gaps below {n} take {width} at most")
    if longest > 1 and not raw[ends[sizes > 1]].all():
        raise DecodeError("a delta-varint ends in a zero byte (an overlong coding)")
    starts = ends - (sizes - 1)
    values = (raw[starts] & 0x7F).astype(np.uint64)
    longer = np.arange(k)
    for byte in range(1, longest):
        longer = longer[sizes[longer] > byte]
        groups = (raw[starts[longer] + byte] & 0x7F).astype(np.uint64)
        values[longer] |= groups << np.uint64(7 * byte)
    # Each gap is below 2^(7·width) ≤ 2^63; their running sum can wrap (to a smaller value)
    # only when k of them can reach 2^64.
    values += np.uint64(1)
    positions: np.ndarray = np.cumsum(values, out=values)
    positions -= np.uint64(1)
    if k << 7 * width >= 1 << 64 and k > 1 and not (positions[1:] > positions[:-1]).all():
        raise DecodeError(f"delta-varint positions pass 2^64, out of range for {n} values")
    if positions[-1] >= n:
        raise DecodeError(
            f"delta-varint positions reach {positions[-1]}, out of range for {n} values"
        )
    signed: np.ndarray = positions.view(np.int64)
    return signed


def _pack_fields(values: np.ndarray, width: int) -> np.ndarray:
    """``width``-bit fields (most significant bit first) of ``values``, packed in bytes."""
    k = values.size
    if width <= 8:
        # Eight fields fill ``width`` bytes: build each group as one word.
        rows = -(-k // 8)
        padded = np.zeros(rows * 8, np.uint8)
        padded[:k] = values
        groups = padded.reshape(rows, 8)
        words = np.zeros(rows, np.uint64)
        for column in range(8):
            words |= groups[:, column].astype(np.uint64) << np.uint64(width * (7 - column))
        packed = words.astype(">u8").view(np.uint8).reshape(rows, 8)[:, 8 - width :]
        return packed.reshape(-1)[: -(-k * width // 8)]
    # Each field's bits, most significant first: its big-endian bytes unpacked, the
    # leading zero bits dropped (one byte per bit, not a word per bit).
    size = next(w for w in (16, 32, 64) if w >= width)
    big = values.astype(f">u{size // 8}")
    fields = np.unpackbits(big.view(np.uint8).reshape(k, size // 8), axis=1)
    return np.packbits(fields[:, size - width :].reshape(-1))


def _read_fields(raw: np.ndarray, k: int, width: int) -> np.ndarray:
    """The ``k`` fields :func:`_pack_fields` packed at the start of ``raw`` (uint8 if
    ``width`` ≤ 8, else int64)."""
    if width <= 8:
        rows = -(-k // 8)
        used = -(-k * width // 8)
        words = np.zeros((rows, 8), np.uint8)
        flat = np.zeros(rows * width, np.uint8)
        flat[:used] = raw[:used]
        words[:, 8 - width :] = flat.reshape(rows, width)
        grouped = words.view(">u8").reshape(rows).astype(np.uint64)
        out = np.empty((rows, 8), np.uint8)
        mask = np.uint64((1 << width) - 1)
        for column in range(8):
            out[:, column] = (grouped >> np.uint64(width * (7 - column))) & mask
        return out.reshape(-1)[:k]
    bits = np.unpackbits(raw, count=k * width).reshape(k, width)
    weights = np.left_shift(1, np.arange(width - 1, -1, -1, dtype=np.int64))
    values: np.ndarray = bits.astype(np.int64) @ weights
    return values
