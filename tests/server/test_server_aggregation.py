"""The accumulator behind every aggregator, without HTTP."""

from __future__ import annotations

import numpy as np
import pytest

from fma_connect.server import mean as mean_module
from fma_connect.server.aggregation import check_requirement_args, requirement_met
from fma_connect.server.mean import Accumulator


def test_weighted_mean_keeps_dtypes_and_rounds_integers() -> None:
    acc = Accumulator()
    assert (
        acc.add([("a", np.array([1.0, 2.0], np.float16)), ("n", np.array([1, 2], np.uint8))])
        is None
    )
    assert (
        acc.add([("a", np.array([3.0, 6.0], np.float16)), ("n", np.array([2, 9], np.uint8))], 3)
        is None
    )
    assert acc.add([("a", np.array([True, False])), ("n", np.array([1, 1], np.uint8))], 1) is None
    result = dict(acc.result())
    assert result["a"].dtype == np.float16
    np.testing.assert_array_equal(
        result["a"], np.array([(1 + 9 + 1) / 5, (2 + 18) / 5], np.float16)
    )
    assert result["n"].dtype == np.uint8
    np.testing.assert_array_equal(result["n"], [2, 6])  # 8/5 -> 2, 30/5 -> 6


def test_refused_updates_leave_the_sum_alone() -> None:
    acc = Accumulator()
    assert acc.add([("w", np.ones(3))]) is None
    assert "tensors" in str(acc.add([("w", np.ones(3)), ("b", np.ones(1))]))
    assert "shape" in str(acc.add([("w", np.ones(4))]))
    assert "named" in str(acc.add([("v", np.ones(3))]))
    assert "NaN" in str(acc.add([("w", np.array([1.0, np.nan, 1.0]))]))
    assert acc.add([("0", np.full(3, 3.0))]) is None  # positional names match by position
    np.testing.assert_array_equal(dict(acc.result())["w"], np.full(3, 2.0))
    assert acc.count == 2


def test_typed_updates_decide_the_result_dtype() -> None:
    acc = Accumulator()
    acc.add([("0", np.array([1.0, 2.0]))], typed=False)  # plain JSON: float64 is a guess
    acc.add([("0", np.array([3.0, 4.0], np.float32))])
    (result,) = acc.result()
    assert result[1].dtype == np.float32


def _mean_both_ways(first: Aggregand, second: Aggregand) -> list[np.ndarray]:
    """The mean of two updates added in each order; both orders must agree exactly."""
    results = []
    for order in ((first, second), (second, first)):
        acc = Accumulator()
        for array, typed in order:
            assert acc.add([("0", array)], typed=typed) is None
        results.append(dict(acc.result())["0"])
    assert results[0].dtype == results[1].dtype
    np.testing.assert_array_equal(results[0], results[1])
    return results


Aggregand = tuple[np.ndarray, bool]


@pytest.mark.parametrize(
    ("first", "second", "dtype", "mean"),
    [
        # typed integers and floats: numpy's promotion, never a cast down to the integers
        ((np.array([1, 2], np.int8), True), (np.array([1.5, 2.0]), True), np.float64, [1.25, 2]),
        (
            (np.array([1, 2], np.float16), True),
            (np.array([2, 3], np.float32), True),
            np.float32,
            [1.5, 2.5],
        ),
        (
            (np.array([1, 3], np.int8), True),
            (np.array([200, 1], np.uint8), True),
            np.int16,
            [100, 2],
        ),
        # plain JSON numbers: fractions make float64, integers only what they need
        ((np.array([1, 2], np.int8), True), (np.array([1.5, 2.0]), False), np.float64, [1.25, 2]),
        ((np.array([1, 2], np.int8), True), (np.array([3, 4]), False), np.int8, [2, 3]),
        ((np.array([1, 2], np.int8), True), (np.array([1000, 4]), False), np.int16, [500, 3]),
        ((np.array([1, 2], np.float32), True), (np.array([3, 4]), False), np.float32, [2, 3]),
        # real and complex updates make a complex mean in either order
        (
            (np.array([1.0, 2.0]), True),
            (np.array([1j, 2 + 2j]), True),
            np.complex128,
            [0.5 + 0.5j, 2 + 1j],
        ),
    ],
)
def test_the_mean_dtype_holds_every_update_whatever_their_order(
    first: Aggregand, second: Aggregand, dtype: type, mean: list[complex]
) -> None:
    result, _ = _mean_both_ways(first, second)
    assert result.dtype == dtype
    np.testing.assert_array_equal(result, np.array(mean, dtype))


def test_requirements() -> None:
    assert not requirement_met("all_clients", None, ["a", "b"], ["a", "a"])
    assert requirement_met("all_clients", None, ["a", "b"], ["b", "a"])
    assert not requirement_met("require_x_updates", [3], ["a"], ["a", "a"])
    assert requirement_met("require_x_updates", [3], ["a"], ["a", "a", "a"])
    assert requirement_met(None, None, [], ["a"])
    assert not requirement_met(None, None, ["a"], [])
    assert check_requirement_args("require_x_updates", [0]) is not None
    assert check_requirement_args("require_x_updates", [2]) is None
    assert check_requirement_args("all_clients", [2]) is not None


def test_integer_sums_stay_exact_when_folded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mean_module, "FOLD_AT", 2)
    acc = Accumulator()
    big = np.array([2**63 - 1, -(2**63)], np.int64)
    for _ in range(5):  # folded twice, then one held: sums beyond int64 on the way
        assert acc.add([("n", big), ("u", np.array([2**64 - 1], np.uint64))]) is None
    result = dict(acc.result())
    assert result["n"].tolist() == big.tolist()
    assert result["u"].tolist() == [2**64 - 1]


@pytest.mark.parametrize("fold_at", [16, 2])
def test_negative_zero_survives_a_mean_of_negative_zeros(
    monkeypatch: pytest.MonkeyPatch, fold_at: int
) -> None:
    monkeypatch.setattr(mean_module, "FOLD_AT", fold_at)
    for count in (1, 3):
        acc = Accumulator()
        for _ in range(count):
            assert acc.add([("w", np.array([-0.0, 0.0, -0.0, 1.5], np.float32))], 2) is None
        (mean,) = acc.result()
        assert np.signbit(mean[1]).tolist() == [True, False, True, False], count
        assert mean[1].tolist() == [0.0, 0.0, 0.0, 1.5]
