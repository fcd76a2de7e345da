"""The ``sparse`` codec: the largest changes of an update, index-coded, with error feedback.

Lossy. An update is sent as the change from its base aggregate (the one it started
from, or the initial model), keeping only the ``fraction`` of each float tensor's
entries that changed most (top-k by magnitude), as in Deep Gradient Compression (Lin et
al., 2018) and Sparse Ternary Compression (Sattler et al., 2019):

* **positions** are coded as a bitmap or with Elias-Fano, whichever is smaller
  (:mod:`~fma_connect.codecs.index_coding`: about 2 + log2(1/fraction) bits each);
* **values** are ``ternary`` (one sign bit each and one scale, the mean magnitude of the
  kept changes, per tensor, as STC sends them), or ``float16`` / ``float32``;
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
     "values": "ternary" | "float16" | "float32",
     "tensors": [{"name", "dtype", "shape", "mode": "sparse" | "whole", "k", "positions",
                  "scale"}, ...]}

followed, per tensor, by its blocks: ``whole`` tensors one block of their bytes; ``sparse``
ones the positions, then the values (packed sign bits, or float16/float32).

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

from ..dtypes import dtype_from_tag, tag_of, to_wire_array
from ..exceptions import DecodeError
from ..hookspecs import hookimpl
from . import manifested
from .base import Tensors
from .context import CodecContext
from .index_coding import decode_positions, encode_positions

__all__ = ["VALUE_CODINGS", "SparseDeltaCodec", "SparseTensor"]

FORMAT_VERSION = 1
_ENTRY_KEYS = {"name", "dtype", "shape", "mode", "k", "positions", "scale"}
#: How kept values travel: bits per value, and the numpy dtype of non-ternary ones.
VALUE_CODINGS = {"ternary": None, "float16": np.float16, "float32": np.float32}
_RESIDUAL = "residual"
#: The most bytes a payload's tensors may declare in all (as the delta codec's bound).
DEFAULT_MAX_OUTPUT_SIZE = 8 << 30


class SparseDeltaCodec:
    """Top-k sparse changes against the base aggregate, index-coded, with error feedback.

    Args:
        fraction: The share of each float tensor's entries sent per update, in (0, 1].
        values: How kept values travel: ``ternary`` (a sign bit each, one scale per
            tensor), ``float16`` or ``float32``.
        error_feedback: Add what an update did not send to the next one (kept in the
            client's codec state).
        max_output_size: The most bytes a received payload's tensors may declare.

    Raises:
        ValueError: a parameter is out of range.
    """

    name = "sparse"
    media_type = "application/vnd.fma-connect.sparse"
    lossless = False
    json_native = False
    uses_context = True

    def __init__(
        self,
        fraction: float = 0.01,
        values: str = "ternary",
        *,
        error_feedback: bool = True,
        max_output_size: int = DEFAULT_MAX_OUTPUT_SIZE,
    ) -> None:
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
        if values not in VALUE_CODINGS:
            raise ValueError(f"values must be one of {sorted(VALUE_CODINGS)}, got {values!r}")
        self.fraction = fraction
        self.values = values
        self.error_feedback = error_feedback
        self.max_output_size = max_output_size

    def tolerance(self, sent: np.ndarray, received: np.ndarray) -> bool:
        """The contract kit's check: the shape, and finite values (what is sent is a choice
        of changes from a base, so the bound on each value is relative to that base; the
        codec's own tests check it)."""
        return received.shape == sent.shape and bool(np.isfinite(received.astype(np.float64)).all())

    def __repr__(self) -> str:
        return (
            f"SparseDeltaCodec(fraction={self.fraction!r}, values={self.values!r}, "
            f"error_feedback={self.error_feedback!r})"
        )

    def encode(self, tensors: Sequence[tuple[str, np.ndarray]], context: CodecContext) -> Any:
        """Encode the largest changes of ``tensors`` from their base; keep the rest.

        Raises:
            EncodeError: a tensor cannot be sent.
            MissingBaseError: the named base aggregate cannot be had.
        """
        base = context.starting_base()
        residuals: dict[str, np.ndarray] = context.state.setdefault(_RESIDUAL, {})
        entries: list[dict[str, Any]] = []
        blocks: Tensors = []
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
            kept, positions, values, scale, sent = self._select(change)
            if self.error_feedback:
                left = change
                left[positions] -= sent
                residuals[name] = left
            kind, coded = encode_positions(positions, change.size)
            entry.update(mode="sparse", k=kept, positions=kind, scale=scale)
            entries.append(entry)
            blocks.append((name, np.frombuffer(coded, np.uint8)))
            blocks.append((name, values))
        manifest = {
            "codec": self.name,
            "format_version": FORMAT_VERSION,
            "base_aggregate": context.base_aggregate,
            "values": self.values,
            "tensors": entries,
        }
        return manifested.pack(self.name, manifest, blocks)

    def _select(self, change: np.ndarray) -> tuple[int, np.ndarray, np.ndarray, float, np.ndarray]:
        """Pick the top-k changes; return k, positions, coded values, scale, values sent."""
        k = min(change.size, max(1, math.ceil(self.fraction * change.size)))
        positions = np.arange(k) if k == change.size else _top_k(np.abs(change), k)
        chosen = change[positions]
        if self.values == "ternary":
            scale = float(np.abs(chosen).mean()) if k else 0.0
            negative = chosen < 0
            sent = np.where(negative, -scale, scale).astype(change.dtype)
            return k, positions, np.packbits(negative), scale, sent
        coding = np.dtype(VALUE_CODINGS[self.values])
        # A change beyond float16's range is sent at its limit; error feedback keeps the rest.
        largest = float(np.finfo(coding).max)
        wire = np.clip(chosen, -largest, largest).astype(coding)
        return k, positions, wire.view(np.uint8), 0.0, wire.astype(change.dtype)

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
            version=FORMAT_VERSION,
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
        return self._tensors(manifest["values"], entries, blocks, base)

    def _tensors(
        self,
        coding: str,
        entries: list[dict[str, Any]],
        blocks: Tensors,
        base: dict[str, np.ndarray],
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
            size = math.prod(shape)
            positions = decode_positions(entry["positions"], first.tobytes(), entry["k"], size)
            work = _work_dtype(dtype)
            sent = self._values(coding, values, entry, work)
            yield name, SparseTensor(reference, positions, sent, dtype)

    @staticmethod
    def _values(
        coding: str, block: np.ndarray, entry: dict[str, Any], work: np.dtype[Any]
    ) -> np.ndarray:
        name, k = entry["name"], entry["k"]
        if coding == "ternary":
            if block.nbytes != -(-k // 8):
                raise DecodeError(f"sparse tensor {name!r}: {block.nbytes} bytes of signs for {k}")
            negative = np.unpackbits(block, count=k).astype(bool)
            scale = entry["scale"]
            signed: np.ndarray = np.where(negative, -scale, scale).astype(work)
            return signed
        wire = np.dtype(VALUE_CODINGS[coding])
        if block.nbytes != k * wire.itemsize:
            raise DecodeError(f"sparse tensor {name!r}: {block.nbytes} bytes of values for {k}")
        values: np.ndarray = block.view(wire).astype(work)
        if not np.isfinite(values).all():
            raise DecodeError(f"sparse tensor {name!r} holds non-finite values")
        return values


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
            best = np.argpartition(magnitude[candidates], candidates.size - k)[-k:]
            return np.sort(candidates[best])
    return np.sort(np.argpartition(magnitude, n - k)[-k:])


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
        change = array.astype(work).reshape(-1) - reference.astype(work).reshape(-1)
    return change if np.isfinite(change).all() else None


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
        if not isinstance(entry["scale"], float) or not math.isfinite(entry["scale"]):
            raise DecodeError(f"sparse manifest scale of {entry['name']!r} is not finite")


@hookimpl
def fma_connect_register_codecs(registry: Any) -> None:
    """Register the ``sparse`` codec (1% of each tensor, ternary, with error feedback)."""
    registry.add(SparseDeltaCodec())
