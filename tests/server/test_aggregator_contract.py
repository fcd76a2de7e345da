"""The aggregator contract kit: every built-in keeps it, and it catches what it promises."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from fma_connect.server.aggregators import (
    BUILTIN_AGGREGATORS,
    Aggregation,
    Aggregator,
    Contribution,
    CoordinateWise,
    Mean,
    RoundContext,
)
from fma_connect.server.aggregators.means import MeanRound
from fma_connect.testing import check_aggregator

#: Arguments and robustness each built-in is checked with.
OPTIONS: dict[str, dict[str, Any]] = {
    "median": {"robust_to": 1},
    # With 4 to 7 updates in the poison check, a quarter trims one at each end.
    "trimmed_mean": {"args": {"trim": 0.25}, "robust_to": 1},
    "fed_adam": {"args": {"eta": 0.1}},
}


@pytest.mark.parametrize("aggregator", BUILTIN_AGGREGATORS, ids=lambda a: a.name)
def test_every_builtin_keeps_the_contract(aggregator: Aggregator) -> None:
    check_aggregator(aggregator, max_examples=25, **OPTIONS.get(aggregator.name, {}))


class LastWins(CoordinateWise):
    """Order-dependent: the last update's values."""

    name = "last_wins"
    summary = "the last update"

    def combine(self, stack: np.ndarray, weights: np.ndarray, args: dict[str, Any]) -> np.ndarray:
        values: np.ndarray = stack[-1].copy()
        return values


class Scribbler(Mean):
    """Writes into the updates it is given."""

    def start(self, context: RoundContext) -> Aggregation:
        class Round(MeanRound):
            def add(self, update: Contribution) -> str | None:
                for _, array in update.tensors:
                    if isinstance(array, np.ndarray) and array.size:
                        array.reshape(-1)[0] = 0
                return super().add(update)

        return Round(self.weighted)


class Careless(Mean):
    """Takes any arguments."""

    def check_args(self, args: Any) -> dict[str, Any]:
        return {}


class Liar(Mean):
    """Says it is weighted, and is not."""

    def start(self, context: RoundContext) -> Aggregation:
        return MeanRound(weighted=False)


def test_an_order_dependent_aggregator_is_caught_unless_it_says_so() -> None:
    with pytest.raises(AssertionError, match="with the updates reversed"):
        check_aggregator(LastWins(), max_examples=30)
    check_aggregator(LastWins(), max_examples=10, order_matters=True)


def test_an_aggregator_writing_into_its_inputs_is_caught() -> None:
    with pytest.raises(ValueError, match="read-only"):
        check_aggregator(Scribbler("scribbler", "writes", weighted=False), max_examples=10)


def test_an_aggregator_taking_unknown_args_is_caught() -> None:
    with pytest.raises(AssertionError, match="took an unknown argument"):
        check_aggregator(Careless("careless", "anything goes", weighted=False))


def test_weights_claimed_but_ignored_are_caught() -> None:
    with pytest.raises(AssertionError, match="num_examples=2 as an update sent twice"):
        check_aggregator(Liar("liar", "not weighted", weighted=True), max_examples=30)


def test_weights_used_but_not_claimed_are_caught() -> None:
    class Hidden(Mean):
        def start(self, context: RoundContext) -> Aggregation:
            return MeanRound(weighted=True)

    with pytest.raises(AssertionError, match="unweighted.*num_examples changed it"):
        check_aggregator(Hidden("hidden", "weighted after all", weighted=False), max_examples=30)


def test_the_mean_is_not_robust_to_a_poisoned_update() -> None:
    with pytest.raises(AssertionError, match="poisoned update"):
        check_aggregator(BUILTIN_AGGREGATORS[0], max_examples=10, robust_to=1)


def test_a_trimmed_mean_that_trims_too_little_is_not_robust() -> None:
    trimmed = next(a for a in BUILTIN_AGGREGATORS if a.name == "trimmed_mean")
    with pytest.raises(AssertionError, match="poisoned update"):
        check_aggregator(trimmed, args={"trim": 0.1}, max_examples=20, robust_to=1)
