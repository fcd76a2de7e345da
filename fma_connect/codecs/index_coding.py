"""Sets of positions in few bits: a bitmap, or Elias-Fano coding, whichever is smaller.

A sparse update sends k of a tensor's n values; their positions are a sorted set of k
distinct integers below n. Two codings, both vectorised in numpy both ways:

* **bitmap**: n bits, one per position (the smaller for dense selections, k > n/~4).
* **Elias-Fano**: each position split into ``low`` low bits, stored as they are, and a
  high part, stored in unary as the gaps between successive high parts: k·low + k +
  (n >> low) bits in all, with ``low = floor(log2(n / k))``: at most about 2 + log2(n/k)
  bits a position, within half a bit of Golomb-Rice coding of the gaps (the optimum for
  random positions), and unlike it decoded without a loop over the positions.

:func:`encode_positions` returns ``(kind, bytes)``; :func:`decode_positions` checks what
it is given and raises :class:`~fma_connect.exceptions.DecodeError` on anything a
correct encoder cannot have written.
"""

from __future__ import annotations

import numpy as np

from ..exceptions import DecodeError

__all__ = ["BITMAP", "ELIAS_FANO", "decode_positions", "encode_positions"]

BITMAP = "bitmap"
ELIAS_FANO = "elias-fano"


def encode_positions(positions: np.ndarray, n: int) -> tuple[str, bytes]:
    """Code sorted distinct ``positions`` (each below ``n``) in the smaller form."""
    k = positions.size
    if k == 0:
        return ELIAS_FANO, b""
    low = _low_bits(n, k)
    elias_bits = k * low + k + (n >> low) + 1
    if n <= elias_bits:
        bits = np.zeros(n, np.uint8)
        bits[positions] = 1
        return BITMAP, np.packbits(bits).tobytes()
    return ELIAS_FANO, _elias_fano(positions.astype(np.int64), n, low)


def decode_positions(kind: str, data: bytes, k: int, n: int) -> np.ndarray:
    """The ``k`` sorted positions below ``n`` that :func:`encode_positions` coded.

    Raises:
        DecodeError: ``data`` is not such a coding.
    """
    if kind == BITMAP:
        if len(data) != -(-n // 8):
            raise DecodeError(f"position bitmap of {len(data)} bytes for {n} values")
        bits = np.unpackbits(np.frombuffer(data, np.uint8), count=n)
        positions = np.flatnonzero(bits)
        if positions.size != k:
            raise DecodeError(f"position bitmap marks {positions.size} values, not {k}")
        return positions
    if kind != ELIAS_FANO:
        raise DecodeError(f"unknown position coding {kind!r}")
    if k == 0:
        if data:
            raise DecodeError("an empty position set has no bytes")
        return np.empty(0, np.int64)
    if k > n:
        raise DecodeError(f"{k} positions cannot be distinct below {n}")
    low = _low_bits(n, k)
    low_bytes = -(-k * low // 8)
    high_len = k + (n >> low) + 1
    if len(data) != low_bytes + -(-high_len // 8):
        raise DecodeError(f"Elias-Fano positions of {len(data)} bytes for {k} of {n} values")
    raw = np.frombuffer(data, np.uint8)
    high_bits = np.unpackbits(raw[low_bytes:], count=high_len)
    ones = np.flatnonzero(high_bits)
    if ones.size != k:
        raise DecodeError(f"Elias-Fano high part holds {ones.size} positions, not {k}")
    high = ones - np.arange(k)
    positions = high << low
    if low:
        fields = np.unpackbits(raw[:low_bytes], count=k * low).reshape(k, low)
        positions |= _from_bits(fields)
    if positions[-1] >= n or (k > 1 and not (np.diff(positions) > 0).all()):
        raise DecodeError("Elias-Fano positions are not distinct, sorted and in range")
    return positions


def _low_bits(n: int, k: int) -> int:
    return max(0, (n // k).bit_length() - 1)


def _elias_fano(positions: np.ndarray, n: int, low: int) -> bytes:
    k = positions.size
    high = positions >> low
    high_bits = np.zeros(k + (n >> low) + 1, np.uint8)
    high_bits[high + np.arange(k)] = 1
    parts = [np.packbits(high_bits)]
    if low:
        # Each low part's bits, most significant first: its big-endian bytes unpacked,
        # the leading zero bits dropped (one byte per bit, not a word per bit).
        width = next(w for w in (8, 16, 32, 64) if w >= low)
        lows = (positions & ((1 << low) - 1)).astype(f">u{width // 8}")
        fields = np.unpackbits(lows.view(np.uint8).reshape(k, width // 8), axis=1)
        parts.insert(0, np.packbits(fields[:, width - low :].reshape(-1)))
    return b"".join(part.tobytes() for part in parts)


def _from_bits(fields: np.ndarray) -> np.ndarray:
    """Rows of bits (most significant first) as integers."""
    weights = np.left_shift(1, np.arange(fields.shape[1] - 1, -1, -1, dtype=np.int64))
    values: np.ndarray = fields.astype(np.int64) @ weights
    return values
