"""Replicas: three ``fma-connect serve`` processes on one PostgreSQL and one data directory,
behind a round-robin proxy, as behind any HTTP load balancer.

Concurrent clients send updates through the proxy; every update is stored exactly once
(none lost, none doubled) and each round's aggregate is numpy's mean of exactly that
round's updates, whichever replica ran the round. One replica SIGKILLed in the middle of
a round (the ``round-running`` pause point) leaves the round to another: its lease
expires, a live replica finds the updates PENDING again, completes the round and nothing
is lost or doubled; the killed request's update, sent again with its idempotency key to
another replica, is the same stored update. A resumable upload whose chunks go to every
replica, completed on two at once, is one update of exactly its bytes.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import blake3
import numpy as np
import pytest
import requests
from reliability_support import as_received, assert_tree_equal, make_tree, reference_mean, wait_for

from fma_connect import FMAConnectError, WebClient
from fma_connect.admin import AdminClient
from fma_connect.codecs.msgpack_numpy import MsgpackCodec
from fma_connect.server.limits import PAUSE_ENV
from fma_connect.server.pgcluster import Cluster
from fma_connect.server.testing import RoundRobinProxy, ServerProcess, running_server_process

TOKEN = "reliability-replicas-token"
#: Seconds a round's lease lasts: how soon a live replica takes a dead one's round over.
LEASE = "2"
CLIENTS = 6
ROUNDS = 3
_NAMES = itertools.count(1)


@pytest.fixture
def database(postgres_cluster: Cluster) -> Iterator[str]:
    name = f"replicas_{next(_NAMES)}"
    url = postgres_cluster.create_database(name)
    yield url
    postgres_cluster.drop_database(name)


@contextlib.contextmanager
def _replicas(
    database: str, data: Path, envs: list[dict[str, str]]
) -> Iterator[list[ServerProcess]]:
    with contextlib.ExitStack() as stack:
        replicas = [
            stack.enter_context(
                running_server_process(
                    data,
                    admin_token=TOKEN,
                    database=database,
                    args=("--log-level", "warning", "--round-lease", LEASE),
                    env=env,
                )
            )
            for env in envs
        ]
        yield replicas


def _model(url: str) -> tuple[int, list[WebClient]]:
    admin = AdminClient(url, TOKEN, retries=0)
    model = admin.create_model(
        "replicated", requirement="require_x_updates", requirement_args=[CLIENTS]
    )
    clients = []
    for _ in range(CLIENTS):
        client = WebClient(model["id"], url=url, codec="msgpack", retries=3)
        client.register()
        clients.append(client)
    return model["id"], clients


def _send_round(clients: list[WebClient], round_number: int) -> dict[int, dict[str, Any]]:
    """Every client sends one update at once; return update id -> the tree sent."""
    sent: dict[int, dict[str, Any]] = {}
    errors: list[BaseException] = []
    lock = threading.Lock()

    def send(i: int, client: WebClient) -> None:
        tree = make_tree(1000 * round_number + i)
        try:
            row = client.send_update(tree)
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)
            return
        with lock:
            sent[row["id"]] = tree

    threads = [threading.Thread(target=send, args=item) for item in enumerate(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    return sent


def _check(
    admin: AdminClient, model_id: int, rounds: list[dict[int, dict[str, Any]]], url: str
) -> None:
    """Every update sent is stored once and COMPLETE in its round's aggregate; the latest
    aggregate is numpy's mean of the last round's updates."""
    updates = admin.list_updates(model_id)
    ids = [u["id"] for u in updates]
    assert len(ids) == len(set(ids)) == CLIENTS * len(rounds)  # nothing lost or doubled
    assert sorted(ids) == sorted(i for sent in rounds for i in sent)
    assert {u["status"] for u in updates} == {2}
    by_aggregate: dict[int, set[int]] = {}
    for update in updates:
        by_aggregate.setdefault(update["applied_aggregate"], set()).add(update["id"])
    aggregates = sorted(a["id"] for a in admin.list_aggregates(model_id))
    assert sorted(by_aggregate) == aggregates
    assert [by_aggregate[a] for a in aggregates] == [set(sent) for sent in rounds]
    reader = WebClient(model_id, url=url, codec="msgpack", retries=3)
    reader.register()
    latest = reader.check_for_latest_model(like=make_tree(0))
    assert latest is not None and latest["aggregate"] == aggregates[-1]
    last = rounds[-1]
    expected = reference_mean([as_received(last[i], "msgpack") for i in sorted(last)], make_tree(0))
    assert_tree_equal(latest["values"], expected)


def _aggregates(admin: AdminClient, model_id: int) -> int:
    return len(admin.list_aggregates(model_id))


def test_three_replicas_store_every_update_once_and_average_like_numpy(
    database: str, tmp_path: Path
) -> None:
    with (
        _replicas(database, tmp_path / "data", [{}, {}, {}]) as replicas,
        RoundRobinProxy([r.url for r in replicas]) as proxy,
    ):
        admin = AdminClient(proxy.url, TOKEN, retries=3)
        model_id, clients = _model(proxy.url)
        rounds = []
        for number in range(ROUNDS):
            rounds.append(_send_round(clients, number))
            done = number + 1
            wait_for(lambda: _aggregates(admin, model_id) == done, "the round")  # noqa: B023
            # Each round's aggregate is checked as it is the latest.
            _check(admin, model_id, rounds, proxy.url)
        assert _aggregates(admin, model_id) == ROUNDS


def test_a_replica_killed_mid_round_leaves_the_round_to_another(
    database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "paused"
    pause = {PAUSE_ENV: f"round-running:{marker}"}
    with (
        _replicas(database, tmp_path / "data", [pause, {}, {}]) as (doomed, *alive),
        RoundRobinProxy([r.url for r in (doomed, *alive)]) as proxy,
    ):
        admin = AdminClient(alive[0].url, TOKEN, retries=3)
        model_id, clients = _model(alive[0].url)
        sent: dict[int, dict[str, Any]] = {}
        # All but the last update through the live replicas: the requirement is not met.
        for i, client in enumerate(clients[:-1]):
            via = WebClient(model_id, client.uuid, url=alive[i % 2].url, codec="msgpack")
            tree = make_tree(i)
            sent[via.send_update(tree)["id"]] = tree
        # The last one to the doomed replica: it stores it, starts the round, and pauses.
        key = uuid.uuid4()
        last = make_tree(CLIENTS - 1)
        monkeypatch.setattr(uuid, "uuid4", lambda: key)  # the Idempotency-Key WebClient sends
        to_doomed = WebClient(
            model_id, clients[-1].uuid, url=doomed.url, codec="msgpack", retries=0
        )

        def send_last() -> None:
            with contextlib.suppress(FMAConnectError):  # its server dies under it
                to_doomed.send_update(last)

        thread = threading.Thread(target=send_last, daemon=True)
        thread.start()
        wait_for(marker.exists, "the doomed replica's round to start")
        assert {u["status"] for u in admin.list_updates(model_id)} == {1}  # RUNNING
        doomed.kill()
        thread.join(30)
        # A live replica takes the round over once the dead one's lease expired.
        wait_for(lambda: _aggregates(admin, model_id) == 1, "another replica to run the round")
        # The client sends its update again (the same key) through the load balancer.
        again = WebClient(model_id, clients[-1].uuid, url=proxy.url, codec="msgpack", retries=3)
        replayed = again.send_update(last)
        monkeypatch.undo()
        assert replayed["id"] not in sent
        sent[replayed["id"]] = last
        _check(admin, model_id, [sent], proxy.url)
        # The service goes on without it: a second round through the proxy.
        second = _send_round(clients, 1)
        wait_for(lambda: _aggregates(admin, model_id) == 2, "the second round")
        _check(admin, model_id, [sent, second], proxy.url)


def test_a_resumable_upload_spread_over_replicas_is_one_update(
    database: str, tmp_path: Path
) -> None:
    with _replicas(database, tmp_path / "data", [{}, {}, {}]) as replicas:
        urls = [r.url for r in replicas]
        admin = AdminClient(urls[0], TOKEN, retries=0)
        model = admin.create_model("uploads", requirement="require_x_updates", requirement_args=[9])
        uuid_ = WebClient(model["id"], url=urls[1], retries=0).register()
        headers = {"CLIENT-UUID": uuid_}
        rng = np.random.default_rng(5)
        arrays = [(f"t{i}", rng.standard_normal(1 << 15).astype(np.float32)) for i in range(4)]
        body = b"".join(bytes(memoryview(c)) for c in MsgpackCodec().encode(arrays))
        size = 64 << 10
        chunks = [body[i : i + size] for i in range(0, len(body), size)]
        manifest = {
            "federated_model": model["id"],
            "media_type": MsgpackCodec.media_type,
            "size": len(body),
            "chunk_size": size,
            "chunks": [blake3.blake3(c).hexdigest() for c in chunks],
        }
        opened = requests.post(
            f"{urls[0]}/api/v1/uploads/", json=manifest, headers=headers, timeout=30
        )
        assert opened.status_code == 201, opened.text
        upload = opened.json()["id"]
        # The same manifest announced to another replica is the same upload.
        again = requests.post(
            f"{urls[1]}/api/v1/uploads/", json=manifest, headers=headers, timeout=30
        )
        assert again.status_code == 200 and again.json()["id"] == upload, again.text
        for index, chunk in enumerate(chunks):
            put = requests.put(
                f"{urls[index % 3]}/api/v1/uploads/{upload}/chunks/{index}/",
                data=chunk,
                headers={**headers, "Content-Type": "application/octet-stream"},
                timeout=30,
            )
            assert put.status_code in (200, 204), put.text
        state = requests.get(f"{urls[2]}/api/v1/uploads/{upload}/", headers=headers, timeout=30)
        assert state.json()["missing"] == []
        answers: list[requests.Response] = []

        def complete(url: str) -> None:
            answers.append(
                requests.post(
                    f"{url}/api/v1/uploads/{upload}/complete/", headers=headers, timeout=60
                )
            )

        threads = [threading.Thread(target=complete, args=(url,)) for url in urls[1:]]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(90)
        assert sorted(a.status_code for a in answers) in ([200, 201], [201, 201]), [
            a.text for a in answers
        ]
        ids = {a.json()["id"] for a in answers}
        assert len(ids) == 1  # one update, whichever replica completed it
        (update,) = admin.list_updates(model["id"])
        assert update["id"] in ids
        stored = requests.get(
            urls[0] + update["data"],
            headers={"CLIENT-UUID": uuid_, "Accept": MsgpackCodec.media_type},
            timeout=30,
        )
        assert stored.status_code == 200 and stored.content == body
