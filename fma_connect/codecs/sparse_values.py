"""How the ``sparse`` codec's kept values travel: signs, floats, or b-bit stochastic levels.

Each float tensor of a ``sparse`` payload sends k changes; this module codes their
values, one block per tensor, and says what the receiver will add (``sent``), which is
what the encoder's error feedback subtracts, so a residual accounts for exactly what
the receiver rebuilds. The codings (:data:`VALUE_CODINGS`, the manifest's ``values``):

* ``ternary``: one sign bit a value and one scale a tensor, the mean magnitude of the
  kept changes (as Sparse Ternary Compression sends them);
* ``float16`` / ``float32``: the values themselves (a change beyond float16's range is
  sent at its limit, the rest left to error feedback);
* ``q2`` ... ``q8``: **b-bit stochastic quantization** (as in QSGD, Alistarh et al.,
  2017): a sign bit and a (b-1)-bit level per value, packed densely (MSB first, no
  padding but the last byte's). The levels are ``L = 2**(b-1) - 1`` equal steps from the
  smallest kept magnitude ``low`` to the largest ``high`` (the manifest's ``scale`` is
  ``[low, high]``): top-k keeps only magnitudes of at least ``low``, so levels spread
  over ``[0, high]`` (QSGD's choice for dense vectors) would waste most of them. Each
  magnitude is rounded to one of its two neighbouring levels at random, up with
  probability its distance from the lower one over the gap, so the value received is
  unbiased (E[sent] = value) and off by less than one step, ``(high - low) / L``.
  ``q2`` is a sign and a choice of ``low`` or ``high``; ``q8`` is 8 bits a value.

The random rounding draws from the :class:`numpy.random.Generator` the codec holds
(PCG64, seeded by its ``seed``; unseeded, from fresh OS entropy). Error feedback
carries each rounding error into the next update anyway; a seed only makes payloads
reproducible.

Decoding checks each block's size, the scale (finite, ``0 <= low <= high``), the levels
(every b-bit code is a sign and a level in range, so what is checked is that the last
byte's padding is zero) and that the values are finite in the working dtype, and raises
:class:`~fma_connect.exceptions.DecodeError` naming the tensor.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

import numpy as np

from ..exceptions import DecodeError

__all__ = [
    "QUANTIZED",
    "VALUE_CODINGS",
    "Coded",
    "block_size",
    "check_scale",
    "decode_values",
    "encode_values",
    "value_width",
]

#: The value codings by name, with the bits each kept value costs.
VALUE_CODINGS: Mapping[str, int] = MappingProxyType(
    {"ternary": 1, "float16": 16, "float32": 32, **{f"q{bits}": bits for bits in range(2, 9)}}
)
#: The stochastically quantized codings by name, with their bits per value.
QUANTIZED: Mapping[str, int] = MappingProxyType(
    {name: bits for name, bits in VALUE_CODINGS.items() if name.startswith("q")}
)
_FLOATS: dict[str, np.dtype[Any]] = {
    "float16": np.dtype(np.float16),
    "float32": np.dtype(np.float32),
}


class Coded(NamedTuple):
    """A tensor's kept values as they travel, and what the receiver adds for them.

    Attributes:
        block: The values block (uint8).
        scale: The manifest entry's ``scale``: a float, or ``[low, high]`` for ``q*``.
        sent: What the receiver adds at the kept positions, in the changes' (working)
            dtype, bit for bit: what error feedback subtracts.
    """

    block: np.ndarray
    scale: float | list[float]
    sent: np.ndarray


def encode_values(coding: str, chosen: np.ndarray, rng: np.random.Generator) -> Coded:
    """Code the kept changes ``chosen`` (float32 or float64) as ``coding`` says.

    Args:
        coding: A name of :data:`VALUE_CODINGS`.
        chosen: The kept changes, in the working dtype.
        rng: Draws the stochastic rounding of the ``q*`` codings.
    """
    if coding == "ternary":
        scale = float(np.abs(chosen).mean()) if chosen.size else 0.0
        negative = chosen < 0
        sent = np.where(negative, -scale, scale).astype(chosen.dtype)
        return Coded(np.packbits(negative), scale, sent)
    if coding in QUANTIZED:
        return _quantize(chosen, QUANTIZED[coding], rng)
    wire_dtype = _FLOATS[coding]
    # A change beyond float16's range is sent at its limit; error feedback keeps the rest.
    largest = float(np.finfo(wire_dtype).max)
    wire = np.clip(chosen, -largest, largest).astype(wire_dtype)
    return Coded(wire.view(np.uint8), 0.0, wire.astype(chosen.dtype))


def decode_values(
    coding: str, block: np.ndarray, scale: Any, k: int, name: str, work: np.dtype[Any]
) -> np.ndarray:
    """The ``k`` changes a values block codes, in the working dtype ``work``.

    ``scale`` is the manifest entry's, already checked by :func:`check_scale`.

    Raises:
        DecodeError: the block does not hold ``k`` such values.
    """
    if coding == "ternary":
        if block.nbytes != block_size(coding, k):
            raise DecodeError(f"sparse tensor {name!r}: {block.nbytes} bytes of signs for {k}")
        negative = np.unpackbits(block, count=k).astype(bool)
        signed: np.ndarray = np.where(negative, -scale, scale).astype(work)
        return signed
    if coding in QUANTIZED:
        return _dequantize(block, scale, k, QUANTIZED[coding], name, work)
    wire_dtype = _FLOATS[coding]
    if block.nbytes != block_size(coding, k):
        raise DecodeError(f"sparse tensor {name!r}: {block.nbytes} bytes of values for {k}")
    values: np.ndarray = block.view(wire_dtype).astype(work)
    if not np.isfinite(values).all():
        raise DecodeError(f"sparse tensor {name!r} holds non-finite values")
    return values


def block_size(coding: str, k: int) -> int:
    """The bytes of the values block of ``k`` values coded as ``coding``."""
    if coding in _FLOATS:
        return k * _FLOATS[coding].itemsize
    return -(-k * VALUE_CODINGS[coding] // 8)


def value_width(coding: str) -> int:
    """The bytes of one coded value (1 for the bit-packed codings): the byte planes a
    compressor is given a values block in."""
    return _FLOATS[coding].itemsize if coding in _FLOATS else 1


def check_scale(coding: str, scale: Any, name: str) -> None:
    """Check a ``sparse`` entry's ``scale`` for ``coding``: a finite float, or for ``q*``
    a finite ``[low, high]`` with ``0 <= low <= high``.

    Raises:
        DecodeError: it is not.
    """
    if coding not in QUANTIZED:
        if not isinstance(scale, float) or not math.isfinite(scale):
            raise DecodeError(f"sparse manifest scale of {name!r} is not finite")
        return
    if (
        not isinstance(scale, list)
        or len(scale) != 2
        or not all(isinstance(x, float) and math.isfinite(x) for x in scale)
        or not 0 <= scale[0] <= scale[1]
    ):
        raise DecodeError(
            f"sparse manifest scale of {name!r} must be finite [low, high] with "
            f"0 <= low <= high for {coding} values, got {scale!r:.80}"
        )


def _quantize(chosen: np.ndarray, bits: int, rng: np.random.Generator) -> Coded:
    """Sign bits and stochastically rounded (bits-1)-bit levels of ``chosen``."""
    magnitude = np.abs(chosen.astype(np.float64))
    low = float(magnitude.min()) if magnitude.size else 0.0
    high = float(magnitude.max()) if magnitude.size else 0.0
    table = _levels(low, high, bits, chosen.dtype)
    top = table.size - 1
    step = (high - low) / top
    # The level at or below each magnitude, then up with the probability that makes the
    # expectation the magnitude itself, measured against the levels actually sent.
    below = np.zeros(magnitude.size, np.int64)
    if step > 0:
        below = np.clip(np.floor((magnitude - low) / step), 0, top - 1).astype(np.int64)
    exact = table.astype(np.float64)
    lower, gap = exact[below], exact[np.minimum(below + 1, top)] - exact[below]
    with np.errstate(divide="ignore", invalid="ignore"):
        up = np.where(gap > 0, np.clip((magnitude - lower) / gap, 0.0, 1.0), 0.0)
    level = below + (rng.random(magnitude.size) < up)
    negative = chosen < 0
    codes = (negative.astype(np.uint8) << (bits - 1)) | level.astype(np.uint8)
    return Coded(_pack(codes, bits), [low, high], _signed(table, level, negative))


def _dequantize(
    block: np.ndarray, scale: list[float], k: int, bits: int, name: str, work: np.dtype[Any]
) -> np.ndarray:
    if block.nbytes != block_size(f"q{bits}", k):
        raise DecodeError(
            f"sparse tensor {name!r}: {block.nbytes} bytes of {bits}-bit values for {k}"
        )
    padding = 8 * block.nbytes - k * bits
    if padding and int(block[-1]) & ((1 << padding) - 1):
        raise DecodeError(f"sparse tensor {name!r}: its {bits}-bit values' padding is not zero")
    table = _levels(scale[0], scale[1], bits, work)
    if not np.isfinite(table).all():
        raise DecodeError(f"sparse tensor {name!r}: its scale {scale!r} overflows {work}")
    codes = _unpack(block, k, bits)
    negative = codes >> (bits - 1) != 0
    return _signed(table, codes & ((1 << (bits - 1)) - 1), negative)


def _levels(low: float, high: float, bits: int, work: np.dtype[Any]) -> np.ndarray:
    """The magnitudes the levels stand for, in ``work``: the encoder's and the decoder's
    one formula, so both sides hold the same values bit for bit."""
    top = (1 << (bits - 1)) - 1
    steps = low + np.arange(top + 1, dtype=np.float64) * ((high - low) / top)
    with np.errstate(over="ignore"):  # a hostile scale; the decoder checks for infinity
        levels: np.ndarray = np.minimum(steps, high).astype(work)
    return levels


def _signed(table: np.ndarray, level: np.ndarray, negative: np.ndarray) -> np.ndarray:
    magnitude = table[level]
    signed: np.ndarray = np.where(negative, -magnitude, magnitude)
    return signed


def _pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """``bits``-bit codes (uint8) packed densely, most significant bit first."""
    if bits == 8:
        return codes
    planes = np.unpackbits(codes[:, None], axis=1)[:, 8 - bits :]
    return np.packbits(planes.reshape(-1))


def _unpack(block: np.ndarray, k: int, bits: int) -> np.ndarray:
    if bits == 8:
        return block
    planes = np.unpackbits(block, count=k * bits).reshape(k, bits)
    codes: np.ndarray = np.packbits(planes, axis=1).reshape(-1) >> (8 - bits)
    return codes
