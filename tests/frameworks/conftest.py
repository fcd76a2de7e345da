"""Fixtures of the framework tests (helpers live in ``fw_support``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import responses
from fw_support import LOSSLESS, FakeFMA


@pytest.fixture(params=LOSSLESS)
def lossless(request: pytest.FixtureRequest) -> str:
    """The name of each installed lossless codec in turn."""
    name: str = request.param
    return name


@pytest.fixture
def fake_fma() -> Iterator[FakeFMA]:
    """A fake FMA service at :data:`BASE` holding model 1 (other URLs are refused)."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield FakeFMA(mock)
