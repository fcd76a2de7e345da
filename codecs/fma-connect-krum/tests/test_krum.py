"""Krum keeps the aggregator contract, resists bad updates, and is found once installed."""

from __future__ import annotations

import numpy as np
import pytest
from fma_connect_krum.krum import Krum

from fma_connect import build_aggregator_registry, plugin_manager
from fma_connect.server.aggregators import AggregatorArgsError, Contribution, RoundContext
from fma_connect.testing import check_aggregator


def test_krum_keeps_the_contract_and_resists_a_poisoned_update() -> None:
    check_aggregator(Krum(), robust_to=1)


def test_multi_krum_keeps_the_contract_and_resists_two_poisoned_updates() -> None:
    check_aggregator(Krum(), args={"f": 2, "m": 2}, robust_to=2)


def test_the_chosen_updates_are_the_honest_cluster() -> None:
    rng = np.random.default_rng(0)
    honest = [rng.normal(0, 0.1, 8) for _ in range(5)]
    bad = [np.full(8, 50.0), np.full(8, -50.0)]
    round_ = Krum().start(RoundContext(args=Krum().check_args({"f": 2, "m": 3})))
    for update in [bad[0], *honest, bad[1]]:
        assert round_.add(Contribution([("w", update)])) is None
    [(name, result)] = round_.result()
    assert name == "w" and np.abs(result).max() < 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"f": 1.5}, "krum's f must be a whole number, got 1.5"),
        ({"m": 0}, "krum's m must be a number at least 1, got 0"),
        ({"k": 1}, "krum takes no argument 'k'"),
    ],
)
def test_bad_args_say_what_is_expected(args: dict[str, float], message: str) -> None:
    with pytest.raises(AggregatorArgsError, match=message):
        Krum().check_args(args)


def test_the_installed_plugin_registers_krum() -> None:
    registry = build_aggregator_registry(plugin_manager())
    info = registry.info("krum")
    assert (info.plugin, info.distribution) == ("krum", "fma-connect-krum")
    assert "median" in registry  # beside the built-ins
