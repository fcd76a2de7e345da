"""Long polls of get_latest_aggregate: held until a round stores an aggregate, bounded."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from starlette.applications import Starlette

import fma_connect.server.app as app_module
import fma_connect.server.testing as server_testing
from fma_connect import WebClient
from fma_connect.admin import AdminClient
from fma_connect.server.testing import RunningServer
from fma_connect.server.waiting import Waiters

WEIGHTS = [[1.0, 2.0], [3.0]]


@pytest.fixture
def apps(monkeypatch: pytest.MonkeyPatch) -> list[Starlette]:
    """The apps the test's servers run (to see how many requests they hold)."""
    made: list[Starlette] = []
    create = app_module.create_app

    def recording(*args: Any, **options: Any) -> Starlette:
        made.append(create(*args, **options))
        return made[-1]

    monkeypatch.setattr("fma_connect.server.testing.create_app", recording)
    return made


@pytest.fixture
def server(apps: list[Starlette], data_dir: Path) -> Iterator[RunningServer]:
    """The conftest's server, with its app recorded in ``apps``."""
    with server_testing.running_server(data_dir) as running:
        yield running


@pytest.fixture
def waiters(apps: list[Starlette], server: RunningServer) -> Waiters:
    """The held requests of ``server``."""
    found: Waiters = apps[0].state.service.waiters
    return found


class CountingSession(requests.Session):
    """A session that counts the GETs it sends."""

    def __init__(self) -> None:
        super().__init__()
        self.gets = 0

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> Any:
        if method == "GET":
            self.gets += 1
        return super().request(method, url, *args, **kwargs)


def _model(admin: AdminClient, server: RunningServer) -> tuple[int, WebClient]:
    """A model that aggregates on the admin's trigger only, and a client that sent an update."""
    model = admin.create_model("waiting", requirement="require_x_updates", requirement_args=[2])
    client = WebClient(model["id"], url=server.url, retries=0)
    client.register()
    client.send_update(WEIGHTS)
    return model["id"], client


def _until(condition: Any) -> None:
    """Wait (bounded, 10 s) for a condition the server reaches on its own."""
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, "the server never reached the state"
        time.sleep(0.005)


def _url(server: RunningServer, model_id: int) -> str:
    return f"{server.url}/api/v1/models/{model_id}/get_latest_aggregate/"


def test_a_held_wait_returns_the_aggregate_a_round_creates(
    server: RunningServer, admin: AdminClient, waiters: Waiters
) -> None:
    model_id, sender = _model(admin, server)
    session = CountingSession()
    client = WebClient(model_id, uuid=sender.uuid, url=server.url, retries=0, session=session)

    def trigger() -> dict[str, Any]:
        _until(lambda: waiters.held == 1)
        return admin.aggregate(model_id)

    with ThreadPoolExecutor(1) as pool:
        created = pool.submit(trigger)
        aggregate = client.wait_for_new_model(60)
    assert aggregate is not None
    assert aggregate["id"] == created.result()["id"]
    assert aggregate["result"] == WEIGHTS
    assert session.gets == 2  # the held request, and the download of its result
    assert waiters.held == 0


def test_a_wait_with_nothing_new_returns_none_at_the_timeout(
    server: RunningServer, admin: AdminClient
) -> None:
    model_id, client = _model(admin, server)
    assert client.wait_for_new_model(0.3) is None
    first = admin.aggregate(model_id)
    assert client.wait_for_new_model(0.3) == client.check_for_new_model_aggregate(first["id"] - 1)
    assert client.wait_for_new_model(0.3) is None  # seen already


def test_an_aggregate_newer_than_update_after_returns_at_once(
    server: RunningServer, admin: AdminClient
) -> None:
    model_id, client = _model(admin, server)
    first = admin.aggregate(model_id)
    # A timeout the test would not survive: the answer must not wait for it.
    aggregate = client.wait_for_new_model(3600, update_after=first["id"] - 1)
    assert aggregate is not None
    assert aggregate["id"] == first["id"]
    response = requests.get(
        _url(server, model_id),
        params={"wait": "3600", "after": str(first["id"] - 1)},
        headers={"CLIENT-UUID": client.uuid},
        timeout=60,
    )
    assert response.status_code == 200
    assert response.json()["id"] == first["id"]
    assert response.headers["FMA-Long-Poll"] == "30"


def test_the_fifth_held_request_of_a_client_gets_429(
    server: RunningServer, admin: AdminClient, waiters: Waiters
) -> None:
    model_id, client = _model(admin, server)
    headers = {"CLIENT-UUID": client.uuid}
    params = {"wait": "30", "after": "-1"}

    def held() -> requests.Response:
        return requests.get(_url(server, model_id), params=params, headers=headers, timeout=60)

    with ThreadPoolExecutor(4) as pool:
        answers = [pool.submit(held) for _ in range(4)]
        _until(lambda: waiters.held == 4)
        fifth = held()
        assert fifth.status_code == 429
        assert "4 requests held" in fifth.json()["detail"]
        assert fifth.headers["Retry-After"].isdigit()
        other = WebClient(model_id, url=server.url, retries=0)
        other.register()  # another client is not refused
        with ThreadPoolExecutor(1) as other_pool:
            waited = other_pool.submit(other.wait_for_new_model, 60)
            _until(lambda: waiters.held == 5)
            aggregate = admin.aggregate(model_id)
            assert (waited.result() or {}).get("id") == aggregate["id"]
        assert [a.result().json()["id"] for a in answers] == [aggregate["id"]] * 4
    assert waiters.held == 0


def test_a_request_without_wait_answers_at_once_as_before(
    server: RunningServer, admin: AdminClient
) -> None:
    model_id, client = _model(admin, server)
    response = requests.get(
        _url(server, model_id),
        params={"after": "x"},
        headers={"CLIENT-UUID": client.uuid},
        timeout=60,
    )
    assert response.status_code == 200
    assert response.json() == {}


@pytest.mark.parametrize(
    ("params", "field", "shown"),
    [
        ({"wait": "soon"}, "wait", "'soon'"),
        ({"wait": "-1"}, "wait", "'-1'"),
        ({"wait": "1e3"}, "wait", "'1e3'"),
        ({"wait": ""}, "wait", "''"),
        ({"wait": "1", "after": "x"}, "after", "'x'"),
        ({"wait": "1", "after": "-2"}, "after", "-2"),
        ({"wait": "1", "after": "1.5"}, "after", "'1.5'"),
    ],
)
def test_bad_wait_or_after_gets_400_naming_it(
    server: RunningServer, admin: AdminClient, params: dict[str, str], field: str, shown: str
) -> None:
    model_id, client = _model(admin, server)
    response = requests.get(
        _url(server, model_id), params=params, headers={"CLIENT-UUID": client.uuid}, timeout=60
    )
    assert response.status_code == 400
    (message,) = response.json()[field]
    assert shown in message
