"""Where a binary body puts its tensors' bytes, read from its first bytes: :class:`Layout`.

A binary codec whose tensors travel as their own raw bytes (``msgpack``) can say, from
a body's head alone, where each tensor's bytes are. A receiver then reads those bytes
from the socket straight into arrays it already has (``WebClient``'s ``into=``): no
receive buffer, no copy. A codec offers this with an optional method::

    def layout(self, head: memoryview, length: int) -> Layout | int | None: ...

``head`` is the body's first bytes, ``length`` the whole body's. It returns how many
head bytes it needs when these are too few (an int larger than ``len(head)``), None
when the body is not laid out as raw tensors one after the other (then the body is read
whole and decoded as usual), else the :class:`Layout`. It raises
:class:`~fma_connect.exceptions.DecodeError` for a head that is damaged, exactly as
``decode`` would for the body.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..exceptions import DecodeError

__all__ = ["Laid", "LaidTensor", "Layout"]


@dataclass(frozen=True)
class LaidTensor:
    """One tensor of a body: its name, dtype and shape, and where its bytes are.

    Attributes:
        start: Offset of its first byte in the body.
        nbytes: Its bytes (``prod(shape) * dtype.itemsize``).
        crc32: The checksum its bytes must have (None: the codec checks none).
    """

    name: str
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    start: int
    nbytes: int
    crc32: int | None


@dataclass(frozen=True)
class Layout:
    """A body's tensors in the order of their bytes, which do not overlap.

    Attributes:
        tensors: The tensors, each starting at or after the end of the one before.
        length: The body's length.
        head_end: Where the head (header and its padding) ends: bytes before it are not
            tensor bytes, and the codec has checked them.
        crc32: The checksum function the codec uses for ``LaidTensor.crc32``.
    """

    tensors: tuple[LaidTensor, ...]
    length: int
    head_end: int
    crc32: Callable[[Any], int]

    def segments(
        self, head: memoryview, arrays: Sequence[np.ndarray]
    ) -> tuple[list[memoryview], list[memoryview]]:
        """Split the body into where its bytes go: the head, gaps, and ``arrays``' memory.

        Args:
            head: The body's first ``head_end`` bytes (or more).
            arrays: One writable C-contiguous array per tensor, of its dtype and shape.

        Returns:
            The writable views that together cover the body in order, and those of them
            that are gaps between tensors (which must arrive as zeros, see :meth:`check`).
        """
        segments = [head[: self.head_end]]
        gaps = []
        at = self.head_end
        for tensor, array in zip(self.tensors, arrays, strict=True):
            if tensor.start > at:
                gaps.append(memoryview(bytearray(tensor.start - at)))
                segments.append(gaps[-1])
            segments.append(array.reshape(-1).view(np.uint8).data)
            at = tensor.start + tensor.nbytes
        if self.length > at:
            gaps.append(memoryview(bytearray(self.length - at)))
            segments.append(gaps[-1])
        return segments, gaps

    def check(self, arrays: Sequence[np.ndarray], gaps: Sequence[memoryview]) -> None:
        """Check what arrived in the tensors' and gaps' memory, as ``decode`` would.

        Raises:
            DecodeError: a tensor's checksum does not match, or a gap is not zeros.
        """
        for i, (tensor, array) in enumerate(zip(self.tensors, arrays, strict=True)):
            raw = array.reshape(-1).view(np.uint8).data
            if tensor.crc32 is not None and self.crc32(raw) != tensor.crc32:
                raise DecodeError(
                    f"tensor {i} ({tensor.name!r}) is corrupt: its crc32 does not match"
                )
        for gap in gaps:
            if gap.tobytes().strip(b"\x00"):
                raise DecodeError("payload is corrupt: the padding between tensors is not zero")


@runtime_checkable
class Laid(Protocol):
    """A codec that can tell from a body's head where its tensors' bytes are."""

    def layout(self, head: memoryview, length: int) -> Layout | int | None:
        """The body's :class:`Layout`, the head bytes needed, or None (see the module)."""
        ...
