"""Round leases between servers sharing a database (two RoundLeases on one store play
two replicas): one holder at a time, a dead holder's round taken over with its updates
PENDING again, and a holder that was taken over cannot commit."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fma_connect.server.database import Connection
from fma_connect.server.leases import LeaseLost, RoundLeases
from fma_connect.server.store import Store
from fma_connect.server.store_core import PENDING, RUNNING, NewBlob


@pytest.fixture
def store(database: str | None, data_dir: Path) -> Iterator[Store]:
    data_dir.mkdir()
    opened = Store(data_dir / "fma.sqlite3", database)
    yield opened
    opened.close()


def _model_with_updates(store: Store, count: int) -> tuple[int, list[int]]:
    store.ensure_admin(None)
    fields = {"name": "m", "developer": 1, "aggregator": "avg_values_if_data"}
    model_id = store.insert_model({**fields, "allow_aggregation": True}, [], None)
    client = store.register_client(model_id, None)
    ids = []
    for i in range(count):
        row, created = store.insert_update(
            {"federated_model": model_id, "client": client},
            NewBlob("msgpack", f"{i:032x}.blob", 1),
            None,
        )
        assert created
        ids.append(row["id"])
    return model_id, ids


def _statuses(store: Store, ids: list[int]) -> list[int]:
    return [store.get_update(i)["status"] for i in ids]  # type: ignore[index]


def test_one_holder_at_a_time_and_a_dead_ones_round_is_taken_over(store: Store) -> None:
    model_id, ids = _model_with_updates(store, 3)
    first, second = RoundLeases(store, 30.0), RoundLeases(store, 30.0)
    assert first.try_take(model_id)
    assert first.try_take(model_id)  # its own again: renewed
    assert not second.try_take(model_id)
    store.set_update_status(ids, RUNNING)  # the first one's round runs
    assert second.expired() == []
    with store.transaction() as conn:  # it died: no renewal, the lease runs out
        conn.execute("UPDATE round_leases SET expires = ?", (time.time() - 1,))
    assert second.expired() == [model_id]
    assert second.try_take(model_id)
    assert _statuses(store, ids) == [PENDING] * 3  # to be averaged by the taker's round
    # The first one, if it was only stalled, may not commit, nor put its updates back.
    with (
        pytest.raises(LeaseLost, match="taken over by another server"),
        store.transaction() as conn,
    ):
        first.fence(conn, model_id)
    store.set_update_status(ids, RUNNING)  # the taker's round
    first.put_back(model_id, ids)
    assert _statuses(store, ids) == [RUNNING] * 3
    assert not first.renew(model_id)
    first.release(model_id)  # not its lease: nothing happens
    assert not first.try_take(model_id)
    second.put_back(model_id, ids)  # the taker's round failed: its updates wait again
    assert _statuses(store, ids) == [PENDING] * 3
    second.release(model_id)
    assert first.try_take(model_id)


def test_a_round_commits_only_under_its_lease(store: Store) -> None:
    model_id, ids = _model_with_updates(store, 2)
    mine, other = RoundLeases(store, 30.0), RoundLeases(store, 30.0)
    store.round_fence = mine.fence
    with mine.hold(model_id):
        with store.transaction() as conn:  # taken over while the round ran
            _expire(conn)
        assert other.try_take(model_id)
        with pytest.raises(LeaseLost):
            store.record_round(model_id, NewBlob("msgpack", "f" * 32 + ".blob", 1), "x", ids, {})
    assert store.latest_aggregate(model_id) is None  # nothing of that round was written
    store.round_fence = other.fence
    aggregate = store.record_round(
        model_id, NewBlob("msgpack", "e" * 32 + ".blob", 1), "x", ids, {}
    )
    assert aggregate is not None


def _expire(conn: Connection) -> None:
    conn.execute("UPDATE round_leases SET expires = ?", (time.time() - 1,))


def test_a_lease_lasts_more_than_nothing(store: Store) -> None:
    with pytest.raises(ValueError, match="more than 0 seconds"):
        RoundLeases(store, 0)
