"""The structure and result dtypes of a round's updates: :class:`Layout`.

The first accepted update fixes the names and shapes; a later one is matched to it and
refused with a reason when it differs or holds NaN or infinity. The dtypes of the
accepted updates decide each tensor's result dtype, by the rules :mod:`.mean`
describes (numpy's promotion, and what plain JSON updates count as).
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any, cast

import numpy as np

from ..codecs.base import Tensors
from .mean_tensors import Update, _materialised, _max_abs
from .structure import by_name, positional

__all__ = ["Layout"]


class Layout:
    """The names, shapes and result dtypes of a round's accepted updates.

    What every aggregator of the reference server shares with the mean: the first
    accepted update fixes the structure; a later one is matched to it by name (or by
    position, for plain JSON), refused with a reason when it differs or holds NaN or
    infinity, and its dtypes promote the result's (see :mod:`.mean`).

    Attributes:
        names: The tensors' names (those of a named update, once one was accepted).
        shapes: Their shapes.
        count: How many updates were accepted.
    """

    def __init__(self) -> None:
        self.names: list[str] = []
        self.shapes: list[tuple[int, ...]] = []
        #: Per tensor, the promoted dtype of the typed updates (None: none was typed),
        #: of the plain JSON ones (None: none was plain), and the range of their integers.
        self._typed: list[np.dtype[Any] | None] = []
        self._plain: list[np.dtype[Any] | None] = []
        self._span: list[tuple[int, int] | None] = []
        self.count = 0

    def accept(self, tensors: Update, *, typed: bool = True) -> tuple[Update, list[Fraction]] | str:
        """Check an update against the accepted ones and record it.

        Args:
            tensors: The update (arrays or lazy tensors).
            typed: Whether its dtypes are the sender's (False for plain JSON).

        Returns:
            Why it is refused (nothing is recorded then); else its tensors in the
            accepted order (lazy integer tensors rebuilt) and each one's largest
            absolute value.
        """
        # Integer and bool sums are bounded from whole tensors (_widen): those are rebuilt.
        tensors = [(name, _materialised(array)) for name, array in tensors]
        if self.names and not positional(self.names):
            # Named: match by name (by_name reads the names only, lazy tensors pass).
            tensors = by_name(self.names, cast(Tensors, tensors)) or tensors
        reason = self._mismatch(tensors)
        if reason is not None:
            return reason
        magnitudes: list[Fraction] = []
        for name, array in tensors:  # one pass: the largest value, and whether all are finite
            magnitude = _max_abs(array)
            if magnitude is None:
                return f"tensor {name!r} holds NaN or infinite values"
            magnitudes.append(magnitude)
        if not self.names:
            self.names = [name for name, _ in tensors]
            self.shapes = [array.shape for _, array in tensors]
            self._typed = [None] * len(tensors)
            self._plain = [None] * len(tensors)
            self._span = [None] * len(tensors)
        elif positional(self.names):  # the result takes the names of any named update
            self.names = [name for name, _ in tensors]
        seen = self._typed if typed else self._plain
        for i, (_, array) in enumerate(tensors):
            before = seen[i]
            seen[i] = array.dtype if before is None else _promote(before, array.dtype)
            if not typed and array.dtype.kind in "iu" and array.size:
                assert isinstance(array, np.ndarray)  # lazy integer tensors were rebuilt
                low, high = int(array.min()), int(array.max())
                span = self._span[i]
                self._span[i] = (
                    (low, high) if span is None else (min(low, span[0]), max(high, span[1]))
                )
        self.count += 1
        return tensors, magnitudes

    def planned(self) -> list[tuple[str, tuple[int, ...], np.dtype[Any]]]:
        """The name, shape and result dtype of each tensor (see :mod:`.mean`).

        Raises:
            ValueError: no update was accepted.
        """
        if not self.count:
            raise ValueError("no update was added")
        return [
            (name, shape, _result_dtype(typed, plain, span))
            for name, shape, typed, plain, span in zip(
                self.names, self.shapes, self._typed, self._plain, self._span, strict=True
            )
        ]

    def _mismatch(self, tensors: Update) -> str | None:
        if not tensors:
            return "the update holds no tensors"
        for name, array in tensors:
            if array.dtype.kind not in "biufcV":
                return f"tensor {name!r} has the non-numeric dtype {array.dtype}"
        if not self.names:
            return None
        if len(tensors) != len(self.names):
            return (
                f"expected {len(self.names)} tensors like the round's accepted updates, "
                f"got {len(tensors)}"
            )
        by_position = positional(self.names) or positional([n for n, _ in tensors])
        for i, ((name, array), expected, shape) in enumerate(
            zip(tensors, self.names, self.shapes, strict=True)
        ):
            if not by_position and name != expected:
                return (
                    f"tensor {i} is named {name!r}; the round's accepted updates have "
                    f"{expected!r} there"
                )
            if array.shape != shape:
                return (
                    f"tensor {expected!r} has shape {list(array.shape)}; the round's "
                    f"accepted updates have {list(shape)}"
                )
        return None


def _promote(first: np.dtype[Any], second: np.dtype[Any]) -> np.dtype[Any]:
    """numpy's promotion of two dtypes; float64 (or complex128) where it has none."""
    if first == second:
        return first
    try:
        return np.result_type(first, second)
    except TypeError:  # e.g. ml_dtypes' bfloat16 with an integer type
        complex_ = "c" in (first.kind, second.kind)
        return np.dtype(np.complex128 if complex_ else np.float64)


def _result_dtype(
    typed: np.dtype[Any] | None, plain: np.dtype[Any] | None, span: tuple[int, int] | None
) -> np.dtype[Any]:
    """The dtype of a tensor's mean, from its typed and plain updates (see :mod:`.mean`).

    Args:
        typed: The promoted dtype of its typed updates, if any.
        plain: The promoted dtype of its plain JSON updates as decoded (float64,
            complex128, int64 or bool), if any.
        span: The least and greatest integer of its plain JSON updates, if any.
    """
    if typed is None:  # plain JSON only: float64 as the stock service answers
        return np.dtype(np.complex128 if plain is not None and plain.kind == "c" else np.float64)
    if plain is None or typed.kind == "c" or (typed.kind in "fV" and plain.kind != "c"):
        return typed  # a float type holds plain JSON numbers as well as JSON did
    if plain.kind in "fc":
        return _promote(typed, np.dtype(np.float64 if plain.kind == "f" else np.complex128))
    if span is None or _holds(typed, *span):
        return typed
    low, high = span
    kind = "u" if typed.kind in "bu" and low >= 0 else "i"
    for size in (1, 2, 4, 8):  # the smallest integer type that holds both
        candidate = np.dtype(f"{kind}{size}")
        if np.can_cast(typed, candidate) and _holds(candidate, low, high):
            return candidate
    return np.dtype(np.float64)


def _holds(dtype: np.dtype[Any], low: int, high: int) -> bool:
    """Whether a bool or integer dtype holds every integer from ``low`` to ``high``."""
    if dtype.kind == "b":
        return low >= 0 and high <= 1
    info = np.iinfo(dtype)
    return info.min <= low and high <= info.max
