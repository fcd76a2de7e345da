"""WebClient.wait_for_new_model against a service that cannot hold requests (the stock one)."""

from __future__ import annotations

import types

import pytest
import responses

import fma_connect.clients as clients
from fma_connect import WebClient
from fma_connect.exceptions import ConfigurationError

URL = "http://fma.test"
LATEST = f"{URL}/api/v1/models/7/get_latest_aggregate/"
UUID = "3f2b6c1e-8d4a-4f0b-9c1d-2e5a7b9c0d1f"
AGGREGATE = {"id": 5, "result": [[1.0, 2.0]], "validation_score": None, "parent": None}


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The client's sleeps between polls, not slept: a fake clock moves by each instead."""
    recorded: list[float] = []
    clock = [1000.0]

    def sleep(seconds: float) -> None:
        recorded.append(seconds)
        clock[0] += seconds

    fake = types.SimpleNamespace(sleep=sleep, monotonic=lambda: clock[0])
    monkeypatch.setattr(clients, "time", fake)
    return recorded


@responses.activate
def test_without_the_header_it_polls_with_backoff_until_the_timeout(sleeps: list[float]) -> None:
    calls = responses.get(LATEST, json={})
    client = WebClient(7, uuid=UUID, url=URL, retries=0)
    assert client.wait_for_new_model(20) is None
    assert sleeps == [0.5, 1.0, 2.0, 4.0, 8.0, 4.5]  # doubling, never past the timeout
    assert calls.call_count == len(sleeps) + 1
    first = calls.calls[0].request
    assert "wait=" in (first.url or "")  # asked once; the answer showed it cannot hold
    assert all("wait=" not in (call.request.url or "") for call in calls.calls[1:])


@responses.activate
def test_without_the_header_the_backoff_stops_at_10_seconds(sleeps: list[float]) -> None:
    responses.get(LATEST, json={})
    client = WebClient(7, uuid=UUID, url=URL, retries=0)
    assert client.wait_for_new_model(60) is None
    assert sleeps[:7] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert sum(sleeps) == 60


@responses.activate
def test_without_the_header_it_returns_the_aggregate_when_it_appears(sleeps: list[float]) -> None:
    responses.get(LATEST, json={})
    responses.get(LATEST, json={})
    responses.get(LATEST, json=AGGREGATE)
    client = WebClient(7, uuid=UUID, url=URL, retries=0)
    aggregate = client.wait_for_new_model(60, update_after=4)
    assert aggregate is not None
    assert aggregate["id"] == 5
    assert aggregate["result"] == [[1.0, 2.0]]
    assert sleeps == [0.5, 1.0]
    assert client.wait_for_new_model(0) is None  # seen: not new any more


@responses.activate
def test_an_aggregate_not_newer_than_update_after_is_waited_past(sleeps: list[float]) -> None:
    responses.get(LATEST, json=AGGREGATE)
    client = WebClient(7, uuid=UUID, url=URL, retries=0)
    assert client.wait_for_new_model(1, update_after=5) is None
    assert sleeps == [0.5, 0.5]


@pytest.mark.parametrize("timeout", [-1, True, "5", float("nan")])
def test_a_timeout_that_is_not_seconds_is_refused(timeout: object) -> None:
    client = WebClient(7, uuid=UUID, url=URL, retries=0)
    with pytest.raises(ConfigurationError, match="timeout must be seconds"):
        client.wait_for_new_model(timeout)  # type: ignore[arg-type]
