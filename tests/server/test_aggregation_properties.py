"""Property tests of the mean itself: finite updates always make a finite aggregate.

The arithmetic cannot overflow, whatever the values (up to the float64 limit) and the
``fed_avg`` weights (``num_examples`` up to 2**62); the result's dtype holds the mean;
where nothing is near overflow the mean is bit for bit the plain weighted sum.
"""

from __future__ import annotations

from fractions import Fraction
from functools import reduce

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fma_connect.server.mean import Accumulator

FLOAT64_MAX = float(np.finfo(np.float64).max)
finite64 = st.floats(allow_nan=False, allow_infinity=False, width=64)
big = st.floats(min_value=1e300, max_value=FLOAT64_MAX) | st.floats(
    min_value=-FLOAT64_MAX, max_value=-1e300
)
weights = st.integers(min_value=1, max_value=2**62)


def updates(elements: st.SearchStrategy[float]) -> st.SearchStrategy[list[np.ndarray]]:
    return st.integers(1, 20).flatmap(
        lambda n: st.lists(hnp.arrays(np.float64, (n,), elements=elements), min_size=1, max_size=40)
    )


def _mean(arrays: list[np.ndarray], weighted: list[int] | None = None) -> np.ndarray:
    accumulator = Accumulator()
    for i, array in enumerate(arrays):
        weight = 1 if weighted is None else weighted[i]
        assert accumulator.add([("w", array)], weight) is None
    ((_, mean),) = accumulator.result()
    return mean


@given(updates(finite64 | big), st.data())
def test_finite_updates_with_any_weights_make_a_finite_mean_between_them(
    arrays: list[np.ndarray], data: st.DataObject
) -> None:
    weighted = data.draw(st.lists(weights, min_size=len(arrays), max_size=len(arrays)))
    mean = _mean(arrays, weighted)
    stacked = np.stack(arrays)
    assert np.isfinite(mean).all()
    # A weighted mean lies between the values averaged (up to the rounding of the sums).
    low, high = stacked.min(axis=0), stacked.max(axis=0)
    slack = 1e-12 * np.maximum(np.abs(low), np.abs(high)) + 1e-300
    with np.errstate(over="ignore"):  # the bounds themselves may pass the float64 limit
        assert (mean >= low - slack).all() and (mean <= high + slack).all()


@given(updates(st.floats(-1e6, 1e6, allow_nan=False, width=64)))
def test_away_from_overflow_the_mean_is_the_plain_sum_bit_for_bit(
    arrays: list[np.ndarray],
) -> None:
    plain = reduce(lambda total, array: total + array, arrays[1:], arrays[0].copy())
    expected = plain / float(len(arrays))
    assert _mean(arrays).tobytes() == expected.tobytes()


@given(hnp.arrays(np.float64, st.integers(0, 30), elements=finite64))
def test_one_update_comes_back_bit_for_bit(array: np.ndarray) -> None:
    assert _mean([array]).tobytes() == array.tobytes()  # -0.0 and subnormals included


def test_values_at_the_float64_limit_average_to_the_limit() -> None:
    top = np.array([FLOAT64_MAX, -FLOAT64_MAX, 1e308])
    mean = _mean([top, top, top], [2**62, 2**62, 1])
    np.testing.assert_array_equal(mean, top)


def test_a_mean_beyond_the_senders_float32_is_held_in_float64() -> None:
    accumulator = Accumulator()
    accumulator.add([("w", np.array([1.0, 2.0], np.float32))])
    accumulator.add([("w", np.array([1e39, 2.0]))], typed=False)  # plain JSON
    ((_, mean),) = accumulator.result()
    assert mean.dtype == np.float64 and np.isfinite(mean).all()
    assert mean[0] == pytest.approx(5e38)


def test_folded_sums_rescale_when_a_later_update_needs_it() -> None:
    """Past the updates held as views, sums are folded; a later huge weight still fits."""
    arrays = [np.full(3, 1e300)] * 20 + [np.full(3, -1e300)]
    weighted = [1] * 20 + [2**62]
    mean = _mean(arrays, weighted)
    assert np.isfinite(mean).all()
    exact = (20 * Fraction(1e300) - 2**62 * Fraction(1e300)) / (20 + 2**62)
    np.testing.assert_allclose(mean, float(exact), rtol=1e-12)
