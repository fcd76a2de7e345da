"""Received weights written into the caller's own arrays: the client's ``into=``.

A federated client fetches a model of the same shapes every round. Receiving it into
the arrays it already has (the previous round's, or its model's own memory) costs no
new memory, and where the answer's tensors travel as raw bytes (the ``msgpack`` codec,
see :mod:`fma_connect.codecs.layout`) they are read from the socket straight into those
arrays: no receive buffer and no copy. Any other answer is decoded as usual and copied
in.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .codecs.base import Codec, Tensors
from .codecs.layout import Laid, Layout
from .exceptions import ConfigurationError
from .spec import _positional, flatten

__all__ = ["Into"]

Place = Callable[[memoryview, int], Sequence[memoryview] | int | None]


class Into:
    """The arrays of an ``into=`` tree, which received weights are written into.

    It stands where a :class:`~fma_connect.spec.Spec` stands for ``like=``:
    :meth:`restore` checks received tensors against the arrays' names and shapes as a
    Spec does, copies them in, and returns the tree itself.

    Raises:
        ConfigurationError: a leaf is not a writable numpy array, or two share memory.
    """

    def __init__(self, tree: Any) -> None:
        try:
            tensors, self.spec = flatten(tree)
        except Exception as exc:
            raise ConfigurationError(f"into= must be a tree of numpy arrays: {exc}") from exc
        for leaf, (name, array) in zip(self.spec.leaves, tensors, strict=True):
            if leaf.kind != "ndarray":
                raise ConfigurationError(
                    f"into= needs numpy arrays to write the weights into; {name!r} is a "
                    f"{leaf.kind} ({leaf.framework}). For a torch module, pass "
                    "{k: v.detach().numpy() for k, v in module.state_dict().items()} "
                    "(CPU tensors: the arrays share their memory)"
                )
            if not array.flags.writeable:
                raise ConfigurationError(f"into= array {name!r} is read-only")
        _check_apart(tensors)
        self.tree = tree
        self.arrays = [array for _, array in tensors]
        self._laid: tuple[Layout, list[memoryview], list[np.ndarray]] | None = None

    @property
    def positional(self) -> bool:
        """Whether the tree names its tensors by position (a list of arrays)."""
        return self.spec.positional

    def placer(self, codec: Codec) -> Place | None:
        """Where a body of ``codec`` goes, for ``Transport.read_body_placed``; None when
        the codec cannot tell (then the body is decoded and copied in)."""
        if not isinstance(codec, Laid):
            return None
        laid_codec = codec

        def place(head: memoryview, length: int) -> Sequence[memoryview] | int | None:
            layout = laid_codec.layout(head, length)
            if layout is None or isinstance(layout, int):
                return layout
            arrays = self._destinations(layout)
            if arrays is None:
                return None
            segments, gaps = layout.segments(head, arrays)
            self._laid = (layout, gaps, arrays)
            return segments

        return place

    def placed(self) -> Tensors:
        """The tensors a placed body wrote into the arrays, checked as the codec would.

        Raises:
            DecodeError: a tensor's checksum does not match, or padding is not zeros.
        """
        assert self._laid is not None  # after place() laid the body out
        layout, gaps, arrays = self._laid
        self._laid = None
        layout.check(arrays, gaps)
        return [(tensor.name, array) for tensor, array in zip(layout.tensors, arrays, strict=True)]

    def restore(self, tensors: Tensors) -> Any:
        """Copy received tensors into the arrays (checked as ``Spec.restore`` checks them).

        Raises:
            FrameworkError: count, names or shapes differ.
        """
        for array, received in zip(self.arrays, self.spec.arrays(tensors), strict=True):
            if not _same(received, array):  # a placed body is in the arrays already
                np.copyto(array, received)
        return self.tree

    def _destinations(self, layout: Layout) -> list[np.ndarray] | None:
        """The arrays the body's tensors go into byte for byte, in the body's order: by
        name (a body may list named tensors in another order), or by position; None
        when they do not all fit."""
        names = [tensor.name for tensor in layout.tensors]
        if len(names) != len(self.arrays):
            return None
        if names == self.spec.names or _positional(names):
            arrays = self.arrays
        elif len(set(names)) == len(names) and set(names) == set(self.spec.names):
            by_name = dict(zip(self.spec.names, self.arrays, strict=True))
            arrays = [by_name[name] for name in names]
        else:
            return None
        fits = all(
            tensor.shape == array.shape and tensor.dtype == array.dtype and array.flags.c_contiguous
            for tensor, array in zip(layout.tensors, arrays, strict=True)
        )
        return arrays if fits else None


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two arrays are views of the same bytes in the same layout."""
    return (
        a.ctypes.data == b.ctypes.data
        and a.shape == b.shape
        and a.strides == b.strides
        and a.dtype == b.dtype
    )


def _check_apart(tensors: Tensors) -> None:
    """Refuse arrays that share memory: the weights written into one would land in both."""
    spans = sorted(
        (*np.lib.array_utils.byte_bounds(array), name) for name, array in tensors if array.nbytes
    )
    for (_, end, first), (start, _, second) in itertools.pairwise(spans):
        if start < end:
            raise ConfigurationError(
                f"into= arrays {first!r} and {second!r} share memory: give each tensor its own"
            )
