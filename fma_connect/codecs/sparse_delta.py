"""The ``sparse`` codec: the largest changes of an update, index-coded, with error feedback.

Lossy. An update is sent as the change from its base aggregate (the one it started
from, or the initial model), keeping only the entries of each float tensor that changed
most (top-k by magnitude: a ``fraction`` of each tensor, or a ``count`` per tensor),
as in Deep Gradient Compression (Lin et al., 2018) and Sparse Ternary Compression
(Sattler et al., 2019):

* **positions** are coded as a bitmap, with Elias-Fano, Golomb-Rice or delta-varint,
  whichever is smallest (:mod:`~fma_connect.codecs.index_coding`: Rice's about
  1.5 + log2(1/fraction) bits each for spread positions);
* **values** are ``ternary`` (one sign bit each and one scale, the mean magnitude of the
  kept changes, per tensor, as STC sends them), ``float16`` / ``float32``, or ``q2`` ...
  ``q8``: b bits each, a sign and a level between the smallest and largest kept
  magnitude, stochastically rounded so each is unbiased, as in QSGD (Alistarh et al.,
  2017); :mod:`~fma_connect.codecs.sparse_values` codes them;
* **error feedback**: what an update did not send (the change left out, and the
  rounding of the kept values) is added to the client's next update, so nothing is lost
  for good, only delayed. It lives in the client's codec state (one float32 copy of the
  model's float tensors) and is kept per tensor name.

Integer and bool tensors, and every tensor when the client holds no base (neither the
named aggregate nor, without one, the initial model), travel whole and exact. The
receiver rebuilds ``base + sent change``, so what it averages is a full update; with
error feedback, the sum of what a client's updates delivered follows the sum of its
true changes.

Layout (format version 1): a ``msgpack`` body (framing, header checksum and a crc32 of
every block are that codec's) whose first tensor, ``"\\u0000sparse"``, is a uint8 array
holding a msgpack manifest::

    {"codec": "sparse", "format_version": 1, "base_aggregate": id (None: initial model),
     "values": "ternary" | "float16" | "float32" | "q2" ... "q8",
     "tensors": [{"name", "dtype", "shape", "mode": "sparse" | "whole", "k", "positions",
                  "scale"}, ...]}

followed, per tensor, by its blocks: ``whole`` tensors one block of their bytes; ``sparse``
ones the positions, then the values (packed sign bits, float16/float32, or packed b-bit
codes). ``scale`` is a float (``ternary``'s magnitude; 0.0 otherwise), or ``[low,
high]`` for ``q*`` values. The ``q*`` codings came later under the same version: a
receiver without them refuses their payloads by the unknown ``values`` name, and every
earlier payload decodes as it did.

**Compression** (``compress=True``, format version 2, the same manifest): each sparse
tensor's two blocks start with a byte, 0 for bytes stored as they are, 1 for a zstd
frame (level 3) of them, of their byte planes for float values, sent when it is the
smaller; a frame's stated content size must be the block's (for positions, at most a
bitmap's) before it is decompressed, and nothing may follow it. Measured on whole
payloads (the federation benchmark's MLP updates, 10 clients, rounds 1, 3 and 6; and
gaussian changes of a 1M tensor) at 1%, 2%, 5%: float16 values save 9-16% (MLP) and
15-19% (gaussian) of the payload, float32 11-24%, ``q4`` 3-14% and 9-12%, ``q8`` 2-12%
and 8-10%, ``q2`` 1-10% and 3-5%; ternary payloads 0-7%, and nothing on gaussian
changes: Elias-Fano's low bits and the signs are uniform and its unary gaps near the
geometric optimum, so positions and signs are at their entropy already unless the
changes cluster, as in the MLP's weights by row (inputs that are always zero, hidden
units that never fire: 20% off the second layer's positions). The levels and float
values are not at theirs: top-k magnitudes crowd the low end of their range.

A receiver that sums updates a slice at a time (the reference server's mean) need not
rebuild them whole: :meth:`SparseDeltaCodec.decode_lazily` gives each ``sparse`` tensor
as a :class:`SparseTensor`, its base and the changes sent, which rebuilds any flat slice
of what :meth:`~SparseDeltaCodec.decode` returns, bit for bit, from that slice of the
base alone. A held update then costs its positions and values, not a model.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import zstandard

from ..dtypes import dtype_from_tag, tag_of, to_wire_array
from ..exceptions import DecodeError
from ..hookspecs import hookimpl
from . import manifested
from .base import Tensors
from .context import CodecContext
from .index_coding import decode_positions, encode_positions
from .sparse_values import (
    VALUE_CODINGS,
    Coded,
    block_size,
    check_scale,
    decode_values,
    encode_values,
    value_width,
)

__all__ = ["RESIDUAL", "VALUE_CODINGS", "SparseDeltaCodec", "SparseTensor"]

#: The format version written without compression, and with; both are read.
FORMAT_VERSION = 1
COMPRESSED_VERSION = 2
READ_VERSIONS = (FORMAT_VERSION, COMPRESSED_VERSION)
_ENTRY_KEYS = {"name", "dtype", "shape", "mode", "k", "positions", "scale"}
#: The key of the error-feedback residual in the codec state (arrays by tensor name).
RESIDUAL = "residual"
#: The most bytes a payload's tensors may declare in all (as the delta codec's bound).
DEFAULT_MAX_OUTPUT_SIZE = 8 << 30


class SparseDeltaCodec:
    """Top-k sparse changes against the base aggregate, index-coded, with error feedback.

    Args:
        fraction: The share of each float tensor's entries sent per update, in (0, 1]
            (at least one entry a tensor); 0.01 when neither it nor ``count`` is given.
        count: Instead of ``fraction``: how many entries of each float tensor are sent
            per update (all of a smaller tensor), as top-k is often stated.
        values: How kept values travel (a name of :data:`VALUE_CODINGS`): ``ternary``
            (a sign bit each, one scale per tensor), ``float16``, ``float32``, or
            ``q2`` ... ``q8``: b bits each, stochastically rounded (unbiased), e.g.
            ``"q4"``. The bit width is part of the name, not a ``bits=`` parameter, so
            one string names the whole coding: it is the manifest's ``values`` as it
            is, and what the reference server's ``aggregate_values`` option takes.
        error_feedback: Add what an update did not send to the next one (kept in the
            client's codec state).
        max_output_size: The most bytes a received payload's tensors may declare.
        seed: Seeds the generator of the ``q*`` codings' random rounding (None: fresh
            OS entropy); it is drawn from by every encode of this object.
        compress: zstd each tensor's positions and values blocks where that makes
            them smaller (format version 2, which receivers from before it refuse).

    Raises:
        ValueError: a parameter is out of range, or both ``fraction`` and ``count`` are
            given.
    """

    name = "sparse"
    media_type = "application/vnd.fma-connect.sparse"
    lossless = False
    json_native = False
    uses_context = True

    def __init__(
        self,
        fraction: float | None = None,
        values: str = "ternary",
        *,
        count: int | None = None,
        error_feedback: bool = True,
        max_output_size: int = DEFAULT_MAX_OUTPUT_SIZE,
        seed: int | None = None,
        compress: bool = False,
    ) -> None:
        if fraction is not None and count is not None:
            raise ValueError(
                f"give fraction or count, not both (got fraction={fraction!r}, count={count!r})"
            )
        if count is not None and (type(count) is not int or count < 1):
            raise ValueError(f"count must be an integer of at least 1, got {count!r}")
        if fraction is None and count is None:
            fraction = 0.01
        if fraction is not None and not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
        if values not in VALUE_CODINGS:
            raise ValueError(f"values must be one of {sorted(VALUE_CODINGS)}, got {values!r}")
        #: The share of each tensor sent (None when ``count`` is set), and the count.
        self.fraction = fraction
        self.count = count
        self.values = values
        self.error_feedback = error_feedback
        self.max_output_size = max_output_size
        # numpy's Generator locks its bit generator, so one codec object may serve
        # several threads; the draws need only be independent, not reproducible.
        self._rng = np.random.default_rng(seed)
        self.compress = compress

    def tolerance(self, sent: np.ndarray, received: np.ndarray) -> bool:
        """The contract kit's check: the shape, and finite values (what is sent is a choice
        of changes from a base, so the bound on each value is relative to that base; the
        codec's own tests check it)."""
        return received.shape == sent.shape and bool(np.isfinite(received.astype(np.float64)).all())

    def __repr__(self) -> str:
        return (
            f"SparseDeltaCodec({self._chosen()}, values={self.values!r}, "
            f"error_feedback={self.error_feedback!r}, compress={self.compress!r})"
        )

    def _chosen(self) -> str:
        return f"count={self.count!r}" if self.count is not None else f"fraction={self.fraction!r}"

    def encode(self, tensors: Sequence[tuple[str, np.ndarray]], context: CodecContext) -> Any:
        """Encode the largest changes of ``tensors`` from their base; keep the rest.

        Raises:
            EncodeError: a tensor cannot be sent.
            MissingBaseError: the named base aggregate cannot be had.
        """
        base = context.starting_base()
        residuals: dict[str, np.ndarray] = context.state.setdefault(RESIDUAL, {})
        entries: list[dict[str, Any]] = []
        blocks: Tensors = []
        # One compressor an encode: a zstd context is not to be shared between threads.
        compressor = zstandard.ZstdCompressor(level=_LEVEL) if self.compress else None
        for name, array in tensors:
            array = to_wire_array(array, name)
            entry: dict[str, Any] = {
                "name": name,
                "dtype": tag_of(array.dtype, name),
                "shape": list(array.shape),
                "mode": "whole",
                "k": 0,
                "positions": "",
                "scale": 0.0,
            }
            reference = base.get(name)
            change = _change(array, reference)
            if change is None:  # no float change to send: the tensor goes whole, exact
                entries.append(entry)
                blocks.append((name, array.reshape(-1).view(np.uint8)))
                residuals.pop(name, None)
                continue
            residual = residuals.get(name) if self.error_feedback else None
            if residual is not None and residual.shape == change.shape:
                change += residual
            positions, values = self._select(change)
            if self.error_feedback:
                left = change
                left[positions] -= values.sent  # what the receiver adds, bit for bit
                residuals[name] = left
            kind, coded = encode_positions(positions, change.size)
            entry.update(mode="sparse", k=positions.size, positions=kind, scale=values.scale)
            entries.append(entry)
            position_block = np.frombuffer(coded, np.uint8)
            if compressor is None:
                blocks += [(name, position_block), (name, values.block)]
            else:
                width = value_width(self.values)
                blocks.append((name, _deflate(position_block, 1, compressor)))
                blocks.append((name, _deflate(values.block, width, compressor)))
        manifest = {
            "codec": self.name,
            "format_version": FORMAT_VERSION if compressor is None else COMPRESSED_VERSION,
            "base_aggregate": context.base_aggregate,
            "values": self.values,
            "tensors": entries,
        }
        return manifested.pack(self.name, manifest, blocks)

    def _select(self, change: np.ndarray) -> tuple[np.ndarray, Coded]:
        """Pick the top-k changes; return their positions and their values as coded."""
        if self.count is not None:
            k = min(change.size, self.count)
        else:
            assert self.fraction is not None  # one of the two is set (__init__)
            k = min(change.size, max(1, math.ceil(self.fraction * change.size)))
        positions = np.arange(k) if k == change.size else _top_k(np.abs(change), k)
        return positions, encode_values(self.values, change[positions], self._rng)

    def decode(
        self, payload: Any, context: CodecContext, *, max_tensors: int | None = None
    ) -> Tensors:
        """Rebuild ``base + sent change`` for every tensor of a payload.

        Raises:
            TooManyTensorsError: it holds more than ``max_tensors`` tensors.
            MissingBaseError: its base is not held here.
            DecodeError: it is corrupt.
        """
        # Rebuilt one tensor at a time: a tensor's positions and values live only while
        # it is rebuilt.
        return [
            (name, tensor if isinstance(tensor, np.ndarray) else tensor.dense())
            for name, tensor in self._read(payload, context, max_tensors)
        ]

    def decode_lazily(
        self, payload: Any, context: CodecContext, *, max_tensors: int | None = None
    ) -> list[tuple[str, np.ndarray | SparseTensor]]:
        """Decode a payload as :meth:`decode` does, without rebuilding its sparse tensors.

        For a receiver that reads tensors a slice at a time (the reference server's
        mean): ``whole`` tensors come as arrays (views of ``payload`` where it allows),
        ``sparse`` ones as :class:`SparseTensor`, whose ``dense()`` is what
        :meth:`decode` returns for them. Every check of :meth:`decode` is made here.

        Raises:
            TooManyTensorsError: it holds more than ``max_tensors`` tensors.
            MissingBaseError: its base is not held here.
            DecodeError: it is corrupt.
        """
        return list(self._read(payload, context, max_tensors))

    def _read(
        self, payload: Any, context: CodecContext, max_tensors: int | None
    ) -> Iterator[tuple[str, np.ndarray | SparseTensor]]:
        """The payload's tensors in order: ``whole`` ones as arrays, ``sparse`` ones lazily.

        The manifest, the declared sizes, the block count and the base are checked
        before the first tensor is given.
        """
        manifest, blocks = manifested.unpack(
            self.name,
            payload,
            # check_version takes the versions read; the annotation says one int.
            version=READ_VERSIONS,  # type: ignore[arg-type]
            keys={"values"},
            entry_keys=_ENTRY_KEYS,
            max_tensors=max_tensors,
            max_blocks=None if max_tensors is None else 2 * max_tensors,
        )
        _check(manifest)
        entries = manifest["tensors"]
        sizes = [math.prod(e["shape"]) * dtype_from_tag(e["dtype"]).itemsize for e in entries]
        if sum(sizes) > self.max_output_size:
            raise DecodeError(
                f"sparse payload declares {sum(sizes):,} bytes of tensors, more than the "
                f"{self.max_output_size:,} this side accepts"
            )
        expected = sum(2 if e["mode"] == "sparse" else 1 for e in entries)
        if expected != len(blocks):
            raise DecodeError(f"sparse manifest needs {expected} blocks, got {len(blocks)}")
        base = context.base(manifest["base_aggregate"]) if expected > len(entries) else {}
        compressed = manifest["format_version"] == COMPRESSED_VERSION
        return self._tensors(manifest["values"], entries, blocks, base, compressed)

    def _tensors(
        self,
        coding: str,
        entries: list[dict[str, Any]],
        blocks: Tensors,
        base: dict[str, np.ndarray],
        compressed: bool,
    ) -> Iterator[tuple[str, np.ndarray | SparseTensor]]:
        rest = iter(blocks)
        for entry in entries:
            name, dtype, shape = entry["name"], dtype_from_tag(entry["dtype"]), entry["shape"]
            first_name, first = next(rest)
            if first_name != name:
                raise DecodeError(f"sparse block {first_name!r} stands where {name!r} belongs")
            if entry["mode"] == "whole":
                if first.nbytes != math.prod(shape) * dtype.itemsize:
                    raise DecodeError(f"sparse tensor {name!r} has the wrong number of bytes")
                yield name, first.view(dtype).reshape(shape)
                continue
            _, values = next(rest)
            reference = base.get(name)
            if reference is None or list(reference.shape) != shape or reference.dtype.kind != "f":
                raise DecodeError(
                    f"sparse tensor {name!r} is a change from a {entry['dtype']} tensor of shape "
                    f"{shape} that the base held here lacks"
                )
            size, k = math.prod(shape), entry["k"]
            if compressed:
                # Any position coding is at most a bitmap and a byte or two (the
                # encoder takes the smaller); decode_positions checks the exact size.
                first = _inflate(first, -(-size // 8) + 2, 1, name, "positions", exact=False)
                values = _inflate(
                    values, block_size(coding, k), value_width(coding), name, "values"
                )
            positions = decode_positions(entry["positions"], first.tobytes(), k, size)
            work = _work_dtype(dtype)
            sent = decode_values(coding, values, entry["scale"], k, name, work)
            yield name, SparseTensor(reference, positions, sent, dtype)


class SparseTensor:
    """A ``sparse`` tensor as received: its base and the changes sent, rebuilt on demand.

    :meth:`dense` is what :meth:`SparseDeltaCodec.decode` returns for the tensor, and
    :meth:`rebuild` any flat slice of it, bit for bit: the slice of the base in the
    working dtype (float32, or float64 for float64 tensors), the sent changes that fall
    in it added, the sum cast to the tensor's dtype. Only positions and values are held
    (the base is shared by every update against it: on the server, a view of its file).

    Attributes:
        shape: The tensor's shape.
        dtype: The tensor's dtype (the sender's).
        size: Its number of elements.
        held_nbytes: The memory it holds of its own (positions and values).
    """

    __slots__ = ("_base", "_positions", "_values", "_work", "dtype", "held_nbytes", "shape", "size")

    def __init__(
        self,
        base: np.ndarray,
        positions: np.ndarray,
        values: np.ndarray,
        dtype: np.dtype[Any],
    ) -> None:
        """Hold a tensor that is ``base`` with ``values`` added at the flat ``positions``.

        Args:
            base: The base tensor (a float tensor of the tensor's shape); not copied
                when it is contiguous.
            positions: The sorted, distinct flat positions of the changes.
            values: The changes, in the working dtype of ``dtype``.
            dtype: The tensor's dtype.
        """
        self.shape: tuple[int, ...] = tuple(base.shape)
        self.dtype: np.dtype[Any] = np.dtype(dtype)
        self.size = int(base.size)
        self._base = base.reshape(-1)
        self._work = _work_dtype(self.dtype)
        # Positions below 2**31 (every tensor smaller than that) are held in half the bytes.
        small = self.size <= np.iinfo(np.int32).max
        self._positions = positions.astype(np.int32 if small else np.int64, copy=False)
        self._values = values
        copied = 0 if np.may_share_memory(self._base, base) else self._base.nbytes
        self.held_nbytes = self._positions.nbytes + self._values.nbytes + copied

    def __repr__(self) -> str:
        return (
            f"SparseTensor(shape={self.shape}, dtype={self.dtype}, changes={self._positions.size})"
        )

    def rebuild(self, start: int, stop: int) -> np.ndarray:
        """Elements ``start`` to ``stop`` (a flat slice) of :meth:`dense`, in a new array."""
        start, stop = max(0, start), min(self.size, stop)
        stop = max(start, stop)
        part = self._base[start:stop].astype(self._work)  # a copy, as the dense rebuild's
        low, high = np.searchsorted(self._positions, (start, stop))
        # Distinct positions: the fancy-indexed add is the dense rebuild's, element for
        # element.
        part[self._positions[low:high] - start] += self._values[low:high]
        rebuilt: np.ndarray = part.astype(self.dtype, copy=False)
        return rebuilt

    def dense(self) -> np.ndarray:
        """The whole tensor, ``base + sent change`` in its dtype and shape (a new array)."""
        return self.rebuild(0, self.size).reshape(self.shape)


#: A compressed payload's positions and values blocks start with a byte: stored as they
#: are, or a zstd frame (of the byte planes, for float values) stating its content size.
_STORED, _ZSTD = 0, 1
#: zstd level 3: level 19 shrinks these blocks by under 2 points more (measured).
_LEVEL = 3


def _deflate(block: np.ndarray, width: int, compressor: zstandard.ZstdCompressor) -> np.ndarray:
    """``block`` as a compressed payload holds it: zstd of its bytes, in byte planes of
    ``width``-byte values, when that is smaller, else the bytes as they are."""
    raw = block.reshape(-1, width).T.tobytes() if width > 1 else block.tobytes()
    packed = compressor.compress(raw)
    if len(packed) < block.nbytes:
        return np.frombuffer(bytes([_ZSTD]) + packed, np.uint8)
    return np.concatenate([np.array([_STORED], np.uint8), block.reshape(-1)])


def _inflate(
    block: np.ndarray, size: int, width: int, name: str, what: str, *, exact: bool = True
) -> np.ndarray:
    """The bytes a :func:`_deflate` block holds, at most (``exact``: just) ``size`` of them.

    The frame's stated content size is checked before anything is decompressed (zstd
    would allocate whatever a header claims).

    Raises:
        DecodeError: the block is malformed, or holds another number of bytes.
    """
    if block.size == 0 or int(block[0]) not in (_STORED, _ZSTD):
        raise DecodeError(f"sparse tensor {name!r}: its {what} block has no valid header")
    if int(block[0]) == _STORED:
        return block[1:]
    frame = block[1:].tobytes()
    try:
        declared = zstandard.frame_content_size(frame)
    except zstandard.ZstdError as exc:
        raise DecodeError(f"sparse tensor {name!r}: its {what} block is no zstd frame") from exc
    if declared < 0:  # -1: not stated (the CONTENTSIZE_UNKNOWN constant is 2**64 - 1)
        raise DecodeError(f"sparse tensor {name!r}: its {what} frame does not state its size")
    if declared != size if exact else declared > size:
        raise DecodeError(
            f"sparse tensor {name!r}: its {what} frame states {declared} bytes, "
            f"{'not' if exact else 'more than'} {size}"
        )
    stream = zstandard.ZstdDecompressor().decompressobj()
    try:
        data = stream.decompress(frame)
    except zstandard.ZstdError as exc:
        raise DecodeError(f"sparse tensor {name!r}: its {what} do not decompress: {exc}") from exc
    if not stream.eof or stream.unused_data or len(data) != declared:
        raise DecodeError(f"sparse tensor {name!r}: its {what} frame is cut short or followed")
    raw = np.frombuffer(data, np.uint8)
    return raw.reshape(width, -1).T.reshape(-1) if width > 1 else raw


#: Tensors at least this large find their top k through a sampled threshold.
_SAMPLED_TOP_K = 1 << 20


def _top_k(magnitude: np.ndarray, k: int) -> np.ndarray:
    """The sorted positions of the ``k`` largest magnitudes (ties: any of them), exactly.

    A full partition of a large tensor is slow (about 3 s for 100M values here), so as
    in Deep Gradient Compression a threshold is estimated from a strided sample first;
    every value at or above it is a candidate, and the top k are picked among the
    candidates, which hold all of them whenever there are at least k. Only when the
    estimate falls short is the whole tensor partitioned.
    """
    n = magnitude.size
    if n >= _SAMPLED_TOP_K:
        step = n // (1 << 16)
        sample = magnitude[::step]
        # A threshold a little below the sample's k-th largest, so it rarely falls short.
        rank = max(0, sample.size - 1 - int(1.2 * k * sample.size / n) - 8)
        threshold = np.partition(sample, rank)[rank]
        candidates = np.flatnonzero(magnitude >= threshold)
        if candidates.size >= k:
            chosen: np.ndarray = candidates[_largest(magnitude[candidates], k)]
            return chosen
    return np.flatnonzero(_largest(magnitude, k))


def _largest(values: np.ndarray, k: int) -> np.ndarray:
    """A mask of ``k`` of the largest ``values``: those above the k-th largest, and as
    many equal to it as make k. A mask keeps the positions in order (no sort)."""
    kth = np.partition(values, values.size - k)[values.size - k]
    mask: np.ndarray = values > kth
    ties = np.flatnonzero(values == kth)
    mask[ties[: k - int(np.count_nonzero(mask))]] = True
    return mask


def _change(array: np.ndarray, reference: np.ndarray | None) -> np.ndarray | None:
    """A float tensor's change from its base (flat), or None where it has none to send.

    None for tensors that are not floats, that the base lacks (or holds in another shape
    or as no float), or whose change is not finite (NaN or infinite values, or a change
    beyond the dtype's range): those go whole.
    """
    if array.dtype.kind != "f" or reference is None:
        return None
    if reference.shape != array.shape or reference.dtype.kind != "f":
        return None
    work = _work_dtype(array.dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        # Cast while subtracting: no copy of either operand.
        change: np.ndarray = np.subtract(array.reshape(-1), reference.reshape(-1), dtype=work)
    if change.size and not (math.isfinite(change.min()) and math.isfinite(change.max())):
        return None  # min and max: two reductions, no mask of the tensor
    return change


def _work_dtype(dtype: np.dtype[Any]) -> np.dtype[Any]:
    """Changes of float64 tensors are taken in float64, of narrower floats in float32."""
    return np.dtype(np.float64 if dtype.itemsize >= 8 else np.float32)


def _check(manifest: dict[str, Any]) -> None:
    """Check what the sparse codec adds to the manifest."""
    if manifest["values"] not in VALUE_CODINGS:
        raise DecodeError(f"sparse manifest values coding {manifest['values']!r} is unknown")
    for entry in manifest["tensors"]:
        if entry["mode"] not in ("sparse", "whole") or not isinstance(entry["positions"], str):
            raise DecodeError(f"sparse manifest entry is malformed: {entry!r:.200}")
        if type(entry["k"]) is not int or not 0 <= entry["k"] <= math.prod(entry["shape"]):
            raise DecodeError(f"sparse manifest k of {entry['name']!r} is out of range")
        # A whole tensor's scale is the encoder's 0.0 whatever the coding.
        coding = manifest["values"] if entry["mode"] == "sparse" else "float32"
        check_scale(coding, entry["scale"], entry["name"])


@hookimpl
def fma_connect_register_codecs(registry: Any) -> None:
    """Register the ``sparse`` codec (1% of each tensor, ternary, with error feedback)."""
    registry.add(SparseDeltaCodec())
