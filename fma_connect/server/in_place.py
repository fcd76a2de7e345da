"""Aggregates computed straight into their blob's file: :class:`InPlace`.

A round's mean is written where its stored bytes go (a writable map of the new blob),
not into a fresh array that is then written out: on this VM fresh memory costs up to
~3 s per GiB on first touch, and the old path paid it twice (the result, then the page
cache of its file). docs/PERFORMANCE.md ("Round trip") has the figures.
"""

from __future__ import annotations

import contextlib
import math
import mmap
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..codecs.base import Codec, Tensors
from ..exceptions import EncodeError
from .blobs import BlobStore, BlobWriter
from .store_core import NewBlob
from .weights_storage import names_to_keep

__all__ = ["InPlace"]


class InPlace:
    """A new blob laid out so that tensors computed into :attr:`arrays` are already stored.

    A binary codec writes a body as a few small chunks (headers) and the tensors' own
    bytes. Encoding stand-ins of the planned names, shapes and dtypes (read-only zero
    pages, which cost no memory) tells where in the body each tensor's bytes go; the
    blob file is made that long and mapped, and :attr:`arrays` view it there. Computing
    into them writes the stored bytes once, in the page cache, instead of into memory
    and then again into the file. :meth:`store` then encodes the computed tensors and
    writes only the chunks that are not already in place. If the codec lays them out
    otherwise (a header whose length depends on the values, say) the chunks are written
    as :func:`store_tensors` writes them: the same bytes either way.

    Use :meth:`open`, and :meth:`discard` when done (after :meth:`store` too).
    """

    def __init__(
        self,
        blobs: BlobStore,
        writer: BlobWriter,
        mapped: mmap.mmap,
        arrays: list[np.ndarray],
        codec: Codec,
    ) -> None:
        self._blobs, self._writer, self._mapped = blobs, writer, mapped
        #: Where the tensors go, in the shapes and dtypes planned (views of the blob's
        #: file; a new array for an empty tensor).
        self.arrays = arrays
        self.codec = codec

    @classmethod
    def open(
        cls,
        blobs: BlobStore,
        planned: Sequence[tuple[str, tuple[int, ...], np.dtype[Any]]],
        codec: Codec,
    ) -> InPlace | None:
        """Lay out a blob for the ``planned`` tensors in ``codec``.

        Returns:
            None where the codec does not write the tensors' bytes as they are (JSON,
            compression, a copy), or cannot write these dtypes.
        """
        places = _places(planned, codec)
        if places is None:
            return None
        positions, nbytes = places
        writer = blobs.writer()
        try:
            mapped = writer.map(nbytes)
            arrays = [
                np.frombuffer(mapped, dtype, math.prod(shape), position).reshape(shape)
                if position is not None
                else np.empty(shape, dtype)
                for (_, shape, dtype), position in zip(planned, positions, strict=True)
            ]
        except BaseException:
            writer.discard()
            raise
        return cls(blobs, writer, mapped, arrays, codec)

    def store(self, tensors: Tensors) -> NewBlob:
        """Store ``tensors`` (computed into :attr:`arrays`, or some of them not) in the codec.

        The computed arrays are made read-only: they are the stored blob's bytes.

        Raises:
            EncodeError: the tensors cannot be written in the codec.
        """
        for array in self.arrays:
            array.flags.writeable = False
        chunks = self.codec.encode(tensors)
        moves = _moves(chunks, self._mapped)
        if moves is None:  # not laid out as planned: written as store_tensors would
            filename, nbytes = self._blobs.write(chunks)
        else:
            for position, chunk in moves:
                self._mapped[position : position + chunk.nbytes] = chunk
            filename, nbytes = self._writer.commit(), self._writer.nbytes
        return NewBlob(self.codec.name, filename, nbytes, names_to_keep(tensors, self.codec))

    def discard(self) -> None:
        """Delete the blob's file unless :meth:`store` committed it."""
        self._writer.discard()


def _places(
    planned: Sequence[tuple[str, tuple[int, ...], np.dtype[Any]]], codec: Codec
) -> tuple[list[int | None], int] | None:
    """Where ``codec`` puts each planned tensor's bytes in a body, and the body's length.

    None if it does not put every non-empty tensor's own bytes there as one chunk.
    """
    sizes = [math.prod(shape) * dtype.itemsize for _, shape, dtype in planned]
    if codec.json_native or not sum(sizes):
        return None
    zeros = mmap.mmap(-1, sum(sizes), flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)
    with contextlib.suppress(AttributeError, OSError):  # read through the huge zero page
        zeros.madvise(mmap.MADV_HUGEPAGE)
    base = _address(memoryview(zeros))
    standins: Tensors = []
    starts: dict[int, int] = {}
    offset = 0
    for (name, shape, dtype), size in zip(planned, sizes, strict=True):
        standin = np.frombuffer(zeros, dtype, math.prod(shape), offset).reshape(shape)
        standins.append((name, standin))
        if size:
            starts[base + offset] = len(standins) - 1
        offset += size
    try:
        chunks = codec.encode(standins)
    except EncodeError:
        return None
    positions: list[int | None] = [None] * len(planned)
    position = 0
    for chunk in chunks:
        view = memoryview(chunk).cast("B")
        address = _address(view)
        index = starts.get(address)
        if index is not None and view.nbytes == sizes[index] and positions[index] is None:
            positions[index] = position
        elif view.nbytes and base < address + view.nbytes and address < base + offset:
            return None  # a part of a tensor's bytes, or more than one
        position += view.nbytes
    if any(p is None for p, size in zip(positions, sizes, strict=True) if size):
        return None
    return positions, position


def _moves(chunks: Sequence[Any], mapped: mmap.mmap) -> list[tuple[int, memoryview]] | None:
    """The chunks of a body to copy into ``mapped`` (a blob of its length) where they go.

    None unless every chunk is either the map's own bytes at its place in the body
    (nothing to copy) or outside the map, and the body is as long as the map.
    """
    view = memoryview(mapped)
    base, end = _address(view), _address(view) + view.nbytes
    moves = []
    position = 0
    for chunk in chunks:
        part = memoryview(chunk).cast("B")
        address = _address(part)
        if part.nbytes and address != base + position:
            if base < address + part.nbytes and address < end:
                return None  # the map's bytes, but elsewhere: copying could overwrite them
            moves.append((position, part))
        position += part.nbytes
    return moves if position == view.nbytes else None


def _address(view: memoryview) -> int:
    """The address of a bytes-like object's first byte."""
    address: int = np.frombuffer(view, np.uint8).__array_interface__["data"][0]
    return address
