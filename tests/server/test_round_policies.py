"""Round policies decided from plain values: deadlines, quorums, minimum and dropped clients."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from fma_connect import WebClient
from fma_connect.admin import AdminClient
from fma_connect.exceptions import APIError
from fma_connect.server.policies import RoundPolicy, check_policy, decide, epoch
from fma_connect.server.testing import RunningServer, running_server

CLIENTS = ["a", "b", "c"]


def test_without_a_policy_the_requirement_alone_decides() -> None:
    none = RoundPolicy()
    assert decide("all_clients", None, none, CLIENTS, [("a", 0.0)], {}, 1e9).run is False
    every = [(c, 0.0) for c in CLIENTS]
    assert decide("all_clients", None, none, CLIENTS, every, {}, 0.0).run is True
    assert decide(None, None, none, CLIENTS, [("a", 0.0)], {}, 0.0).run is True
    assert decide(None, None, none, CLIENTS, [], {}, 0.0).run is False


def test_a_deadline_runs_the_round_with_what_arrived_once_a_quorum_did() -> None:
    policy = RoundPolicy(round_deadline=60.0, round_quorum=2)
    pending = [("a", 100.0), ("b", 130.0)]
    before = decide("all_clients", None, policy, CLIENTS, pending, {}, 159.9)
    assert before.run is False and before.wake_at == 160.0  # 60 s after the first update
    assert decide("all_clients", None, policy, CLIENTS, pending, {}, 160.0).run is True
    alone = decide("all_clients", None, policy, CLIENTS, pending[:1], {}, 500.0)
    assert alone.run is False and alone.wake_at is None and "1 of 2" in alone.why
    # Two updates of one client are one client towards the quorum.
    twice = decide("all_clients", None, policy, CLIENTS, [("a", 100.0), ("a", 110.0)], {}, 500.0)
    assert twice.run is False


def test_no_round_runs_before_enough_clients_registered() -> None:
    policy = RoundPolicy(min_clients=3)
    decision = decide(None, None, policy, CLIENTS[:2], [("a", 0.0)], {}, 0.0)
    assert decision.run is False and "2 of the 3" in decision.why
    assert decide(None, None, policy, CLIENTS, [("a", 0.0)], {}, 0.0).run is True


def test_all_clients_stops_waiting_for_clients_that_missed_rounds() -> None:
    policy = RoundPolicy(drop_after_missed=2)
    pending = [("a", 0.0), ("b", 0.0)]
    assert decide("all_clients", None, policy, CLIENTS, pending, {"c": 1}, 0.0).run is False
    assert decide("all_clients", None, policy, CLIENTS, pending, {"c": 2}, 0.0).run is True
    # A dropped client that sends an update again is waited for again.
    assert decide("all_clients", None, policy, CLIENTS, [("c", 0.0)], {"c": 5}, 0.0).run is False


@pytest.mark.parametrize(
    ("name", "value", "ok"),
    [
        ("round_deadline", 30, True),
        ("round_deadline", 0.5, True),
        ("round_deadline", 0, False),
        ("round_deadline", float("inf"), False),
        ("round_deadline", True, False),
        ("round_deadline", "30", False),
        ("round_quorum", 1, True),
        ("round_quorum", 0, False),
        ("round_quorum", 2.0, False),
        ("min_clients", None, True),
        ("drop_after_missed", -1, False),
    ],
)
def test_policy_fields_are_checked(name: str, value: object, ok: bool) -> None:
    problem = check_policy(name, value)
    assert (problem is None) is ok
    if not ok:
        assert problem is not None and name in problem and repr(value) in problem


def test_stored_timestamps_read_as_epoch_seconds() -> None:
    assert epoch("1970-01-01T00:01:00.500000Z") == 60.5


class MovedClock:
    """The time now plus however far the test moved it (stored updates keep real time)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@pytest.fixture
def clock() -> MovedClock:
    return MovedClock()


@pytest.fixture
def policy_server(data_dir: Path, clock: MovedClock) -> Iterator[tuple[RunningServer, AdminClient]]:
    with (
        running_server(data_dir, clock=clock) as running,
        AdminClient(running.url, running.admin_token, retries=0) as admin,
    ):
        yield running, admin


def _clients(url: str, model_id: int, count: int) -> list[WebClient]:
    clients = [WebClient(model_id, url=url, codec="msgpack") for _ in range(count)]
    for client in clients:
        client.register()
    return clients


def _latest_id(admin: AdminClient, model_id: int) -> int | None:
    aggregates = admin.list_aggregates(model_id)
    return max((a["id"] for a in aggregates), default=None)


def test_a_deadline_aggregates_the_quorum_that_arrived(
    policy_server: tuple[RunningServer, AdminClient], clock: MovedClock
) -> None:
    running, admin = policy_server
    model = admin.create_model(
        "deadline", requirement="all_clients", round_deadline=3600, round_quorum=2
    )
    assert model["round_deadline"] == 3600 and model["round_quorum"] == 2
    a, b, c = _clients(running.url, model["id"], 3)
    a.send_update([np.full(4, 1.0, np.float32)])
    b.send_update([np.full(4, 3.0, np.float32)])
    assert a.check_for_new_model_aggregate() is None  # c is late, the deadline far off
    clock.advance(3601)
    aggregate = a.wait_for_new_model(10)  # the server's deadline thread runs the round
    assert aggregate is not None
    np.testing.assert_array_equal(aggregate["result"][0], np.full(4, 2.0, np.float32))
    statuses = {u["client"]: u["status"] for u in admin.list_updates(model["id"])}
    assert statuses == {a.uuid: 2, b.uuid: 2}  # COMPLETE; c sent nothing
    c.send_update([np.full(4, 9.0, np.float32)])  # c's late update waits for the next round
    assert _latest_id(admin, model["id"]) == aggregate["id"]


def test_past_the_deadline_the_round_runs_once_the_quorum_arrives(
    policy_server: tuple[RunningServer, AdminClient], clock: MovedClock
) -> None:
    running, admin = policy_server
    model = admin.create_model(
        "quorum", requirement="all_clients", round_deadline=60, round_quorum=2
    )
    a, b, _ = _clients(running.url, model["id"], 3)
    a.send_update([np.full(2, 1.0)])
    clock.advance(120)  # past the deadline with 1 of 2 clients: it waits
    b.send_update([np.full(2, 5.0)])  # the quorum: the round runs in this request
    aggregate = a.check_for_new_model_aggregate()
    assert aggregate is not None
    np.testing.assert_array_equal(aggregate["result"][0], np.full(2, 3.0))


def test_no_round_before_the_minimum_of_clients_registered(
    policy_server: tuple[RunningServer, AdminClient],
) -> None:
    running, admin = policy_server
    model = admin.create_model("min", min_clients=3)
    a, _ = _clients(running.url, model["id"], 2)
    a.send_update([np.full(2, 1.0)])
    assert _latest_id(admin, model["id"]) is None
    (c,) = _clients(running.url, model["id"], 1)
    c.send_update([np.full(2, 3.0)])  # three registered now: both pending updates go
    aggregate = c.check_for_new_model_aggregate()
    assert aggregate is not None
    np.testing.assert_array_equal(aggregate["result"][0], np.full(2, 2.0))


def test_all_clients_stops_waiting_for_a_client_that_missed_rounds(
    policy_server: tuple[RunningServer, AdminClient], clock: MovedClock
) -> None:
    running, admin = policy_server
    model = admin.create_model(
        "drop", requirement="all_clients", round_deadline=60, drop_after_missed=1
    )
    a, b, gone = _clients(running.url, model["id"], 3)
    a.send_update([np.full(2, 1.0)])
    b.send_update([np.full(2, 1.0)])
    clock.advance(61)
    first = a.wait_for_new_model(10)  # the deadline's round, without `gone`
    assert first is not None
    clock.advance(-61)  # back: the next round's deadline is ahead again
    a.send_update([np.full(2, 2.0)])
    b.send_update([np.full(2, 4.0)])  # every client still waited for has sent: at once
    second = a.check_for_new_model_aggregate()
    assert second is not None and second["id"] > first["id"]
    np.testing.assert_array_equal(second["result"][0], np.full(2, 3.0))
    gone.send_update([np.full(2, 5.0)])  # back: waited for again
    a.send_update([np.full(2, 5.0)])
    assert _latest_id(admin, model["id"]) == second["id"]  # b's update is still missing


@pytest.mark.parametrize(
    ("field", "value"),
    [("round_deadline", -5), ("round_quorum", 0), ("min_clients", "3"), ("drop_after_missed", 1.5)],
)
def test_bad_policy_fields_get_400(
    policy_server: tuple[RunningServer, AdminClient], field: str, value: object
) -> None:
    _, admin = policy_server
    with pytest.raises(APIError) as caught:
        admin.create_model("bad", **{field: value})  # type: ignore[arg-type]
    assert caught.value.status_code == 400
    assert field in str(caught.value) and repr(value) in str(caught.value)
