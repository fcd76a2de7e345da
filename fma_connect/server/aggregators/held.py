"""Every update of a round, held as files and read a slice of all of them at a time.

For aggregators that need all of a round's values at each coordinate (a median, a
trimmed mean) or all pairs of updates (Krum's distances). An update whose tensors view
its memory-mapped blob file is held as those views: no memory, one open file each. Any
other (plain JSON parsed in memory, ``sparse`` updates' lazy tensors), and any past
:data:`HOLD_FILES` open files, is copied a slice at a time into one anonymous spill file
in the temporary directory (``TMPDIR``; unlinked at once, so nothing is left behind,
even after a crash), so a round never holds a copy of an update in memory beyond the
one being read. :meth:`HeldUpdates.stack` then reads one slice of
one tensor of every update into an ``(updates, elements)`` float64 array of about
:data:`STACK` elements: the working memory, whatever the number of updates.

So a round needs the result, one stack (2 MiB), and disk (the spill file) for updates
not already in binary blob files.
"""

from __future__ import annotations

import mmap
import tempfile
from typing import IO, Any, cast

import numpy as np

from .. import mean as mean_module
from ..mean import Layout, LazyTensor, part, views_files
from .base import Contribution

__all__ = ["HOLD_FILES", "STACK", "HeldUpdates"]

#: Updates held as views of their own files (each keeps a file descriptor open);
#: later ones are spilled.
HOLD_FILES = 256
#: Elements of a stack (updates x slice), the working memory of a slice-wise pass.
STACK = 1 << 18
#: Spilled tensors start at multiples of this, so that their views are aligned.
_ALIGN = 64


class _Spilled:
    """Where a tensor copied into the spill file lies."""

    def __init__(self, offset: int, shape: tuple[int, ...], dtype: np.dtype[Any]) -> None:
        self.offset, self.shape, self.dtype = offset, shape, dtype


class HeldUpdates:
    """The accepted updates of a round, kept as views of files (see the module).

    Attributes:
        layout: Their names, shapes and result dtypes.
        weights: Each accepted update's weight (its ``num_examples``, 1 when not given).
        clients: Each accepted update's client.
    """

    def __init__(self, *, allow_complex: bool = False) -> None:
        self.layout = Layout()
        self.weights: list[float] = []
        self.clients: list[str] = []
        self._allow_complex = allow_complex
        self._tensors: list[list[np.ndarray | _Spilled]] = []
        self._files = 0
        self._spill: IO[bytes] | None = None
        self._mapped: mmap.mmap | None = None
        self._cached: list[list[np.ndarray]] | None = None

    def __len__(self) -> int:
        return len(self._tensors)

    def add(self, update: Contribution, name: str) -> str | None:
        """Hold an update; return why it is refused, or None.

        Args:
            update: The update.
            name: The aggregator's name, for the reason of a refused complex tensor.
        """
        complex_ = next((n for n, array in update.tensors if array.dtype.kind == "c"), None)
        if complex_ is not None and not self._allow_complex:
            return f"tensor {complex_!r} is complex, which {name} cannot order"
        accepted = self.layout.accept(update.tensors, typed=update.typed)
        if isinstance(accepted, str):
            return accepted
        tensors, _ = accepted
        self._cached = None
        arrays: list[np.ndarray | _Spilled] = [
            array for _, array in tensors if isinstance(array, np.ndarray)
        ]
        keep = (
            len(arrays) == len(tensors)
            and views_files(cast(list[np.ndarray], arrays))
            and self._files < HOLD_FILES
        )
        if keep:
            self._files += 1
            self._tensors.append(arrays)
        else:
            self._tensors.append([self._write(array) for _, array in tensors])
        self.weights.append(update.weight)
        self.clients.append(update.client)
        return None

    def slice_length(self, tensor: int) -> int:
        """Elements per slice of tensor ``tensor`` such that a stack holds about STACK."""
        del tensor  # the same for every tensor; the argument keeps the call site readable
        return max(1, STACK // max(1, len(self._tensors)))

    def stack(self, tensor: int, start: int, stop: int) -> np.ndarray:
        """Flat elements ``start`` to ``stop`` of tensor ``tensor`` of every update, in
        float64 (complex128 for complex tensors): an ``(updates, elements)`` array."""
        views = self._views()
        size = len(range(start, min(stop, self._size(tensor))))
        complex_ = any(update[tensor].dtype.kind == "c" for update in views)
        stacked = np.empty((len(views), size), np.complex128 if complex_ else np.float64)
        for row, update in zip(stacked, views, strict=True):
            values = part(update[tensor], start, stop)
            row[:] = values.astype(stacked.dtype) if values.dtype.kind == "V" else values
        return stacked

    def arrays(self, update: int) -> list[np.ndarray]:
        """The tensors of accepted update ``update`` (views; read-only use)."""
        return self._views()[update]

    def _size(self, tensor: int) -> int:
        shape = self.layout.shapes[tensor]
        size = 1
        for n in shape:
            size *= n
        return size

    def _write(self, tensor: np.ndarray | LazyTensor) -> _Spilled:
        """Copy a tensor into the spill file, a slice at a time."""
        if self._spill is None:
            self._spill = tempfile.TemporaryFile(prefix="fma-round-")  # noqa: SIM115
        self._mapped = None  # mapped again, longer, when next read
        spill = self._spill
        offset = spill.seek(0, 2)
        pad = -offset % _ALIGN
        if pad:
            spill.write(b"\0" * pad)
            offset += pad
        for start in range(0, tensor.size, mean_module.SLICE):
            values = part(tensor, start, start + mean_module.SLICE)
            spill.write(np.ascontiguousarray(values).tobytes())
        return _Spilled(offset, tuple(tensor.shape), tensor.dtype)

    def _views(self) -> list[list[np.ndarray]]:
        """Every held tensor as an array (spilled ones as views of the mapped spill)."""
        if self._cached is not None:
            return self._cached
        if self._spill is not None and self._mapped is None:
            self._spill.flush()
            if self._spill.seek(0, 2):
                self._mapped = mmap.mmap(self._spill.fileno(), 0, access=mmap.ACCESS_READ)
        views = []
        for update in self._tensors:
            row = []
            for tensor in update:
                if isinstance(tensor, _Spilled):
                    count = 1
                    for n in tensor.shape:
                        count *= n
                    if count == 0 or self._mapped is None:
                        row.append(np.empty(tensor.shape, tensor.dtype))
                    else:
                        flat = np.frombuffer(self._mapped, tensor.dtype, count, tensor.offset)
                        row.append(flat.reshape(tensor.shape))
                else:
                    row.append(tensor)
            views.append(row)
        self._cached = views
        return views

    def close(self) -> None:
        """Let go of the files (the spill file is deleted); safe to call twice."""
        self._tensors = []
        self._cached = None
        self._mapped = None  # closed when the last view of it goes
        if self._spill is not None:
            self._spill.close()
            self._spill = None
