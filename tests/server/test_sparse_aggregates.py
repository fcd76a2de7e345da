"""Sparse steps of aggregates: few entries change, the rest is owed, the payload is exact."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fma_connect.codecs.base import Tensors
from fma_connect.codecs.context import CodecContext, MissingBaseError
from fma_connect.codecs.sparse_delta import SparseDeltaCodec
from fma_connect.server.sparse_aggregates import sparse_step

_FLOATS = st.sampled_from([np.float16, np.float32, np.float64])
_SHAPES = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=12)


_WIDTHS: dict[type, Literal[16, 32, 64]] = {np.float16: 16, np.float32: 32, np.float64: 64}


def _finite(dtype: type) -> st.SearchStrategy[float]:
    return st.floats(-100, 100, width=_WIDTHS[dtype])


def _held(tensors: Tensors) -> Callable[[int | None], Tensors]:
    """The bases of a model whose only base is ``tensors`` (its initial model)."""

    def bases(aggregate: int | None) -> Tensors:
        if aggregate is not None:
            raise MissingBaseError(aggregate)
        return tensors

    return bases


@st.composite
def _rounds(draw: st.DrawFn) -> tuple[list[tuple[str, np.ndarray]], list[tuple[str, np.ndarray]]]:
    """A previous aggregate and a round's mean with the same names and shapes."""
    previous, mean = [], []
    for i in range(draw(st.integers(1, 3))):
        dtype = draw(_FLOATS)
        shape = draw(_SHAPES)
        before = draw(hnp.arrays(dtype, shape, elements=_finite(dtype)))
        after = draw(hnp.arrays(dtype, shape, elements=_finite(dtype)))
        if draw(st.booleans()):  # an all-zero change, or a few entries only
            after = before.copy()
        previous.append((f"t{i}", before))
        mean.append((f"t{i}", after))
    if draw(st.booleans()):
        counter = np.arange(4, dtype=np.int32)
        previous.append(("count", counter))
        mean.append(("count", counter + 1))
    return previous, mean


@settings(max_examples=60, deadline=None)
@given(_rounds(), st.floats(0.01, 1.0), st.sampled_from(["float32", "float16", "ternary"]))
def test_a_step_changes_at_most_the_fraction_and_its_payload_decodes_to_it(
    tensors: tuple[list[tuple[str, np.ndarray]], list[tuple[str, np.ndarray]]],
    fraction: float,
    values: str,
) -> None:
    previous, mean = tensors
    bases = _held(previous)
    step = sparse_step(mean, None, bases, {}, fraction, values)
    published = dict(step.aggregate)
    assert list(published) == [name for name, _ in mean]
    for (name, before), (_, after) in zip(previous, mean, strict=True):
        out = published[name]
        assert out.shape == after.shape and out.dtype == after.dtype
        if after.dtype.kind != "f":  # integer tensors are published whole
            assert np.array_equal(out, after)
            continue
        changed = np.count_nonzero(out.reshape(-1) != before.reshape(-1))
        assert changed <= max(1, math.ceil(fraction * after.size))
        assert np.isfinite(out).all()
    # What a client holding the previous aggregate decodes from the payload: the same bits.
    decoded = SparseDeltaCodec().decode(bytearray(step.payload), CodecContext(bases=bases))
    for name, array in decoded:
        assert array.dtype == published[name].dtype
        assert array.tobytes() == published[name].tobytes()


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 2000), st.floats(0.01, 0.5), st.integers(0, 2**32 - 1))
def test_nothing_is_lost_only_delayed(n: int, fraction: float, seed: int) -> None:
    """The published change plus the residual is the change asked for (float32 rounding)."""
    rng = np.random.default_rng(seed)
    previous = [("w", rng.standard_normal(n).astype(np.float32))]
    bases = _held(previous)
    carried = {"w": (rng.standard_normal(n) * 0.01).astype(np.float32)}
    mean = [("w", previous[0][1] + (rng.standard_normal(n) * 0.1).astype(np.float32))]
    step = sparse_step(mean, None, bases, carried, fraction, "float32")
    asked = mean[0][1].astype(np.float64) - previous[0][1] + carried["w"]
    applied = dict(step.aggregate)["w"].astype(np.float64) - previous[0][1]
    owed = step.residual["w"].astype(np.float64)
    np.testing.assert_allclose(applied + owed, asked, rtol=0, atol=1e-5)
    assert np.count_nonzero(applied) <= max(1, math.ceil(fraction * n))
    # The largest changes go first: nothing left owed is larger than what was applied.
    sent = np.abs(asked[applied != 0])
    if sent.size and sent.size < n:
        assert np.abs(owed[applied == 0]).max() <= sent.min() + 1e-6
