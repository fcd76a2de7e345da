"""FedAdam and FedYogi through real rounds, against a numpy reference, across a restart."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from fma_connect import WebClient
from fma_connect.admin import AdminClient
from fma_connect.server.testing import running_server

ARGS = {"eta": 0.05, "beta_1": 0.8, "beta_2": 0.95, "tau": 0.01}
EXAMPLES = [10, 30, 60]


def _initial() -> dict[str, np.ndarray]:
    return {
        "kernel": np.linspace(-1, 1, 12).reshape(3, 4),
        "bias": np.full(4, 0.5, np.float32),
        "steps": np.arange(3, dtype=np.int64),
    }


def _update(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "kernel": rng.standard_normal((3, 4)),
        "bias": rng.standard_normal(4).astype(np.float32),
        "steps": rng.integers(0, 100, 3),
    }


class Reference:
    """The server optimizer in plain numpy, in the server's order of operations."""

    def __init__(self, yogi: bool, args: dict[str, float]) -> None:
        self.yogi, self.args = yogi, args
        self.m: dict[str, np.ndarray] = {}
        self.v: dict[str, np.ndarray] = {}

    def step(
        self, x: dict[str, np.ndarray], updates: Sequence[dict[str, np.ndarray]], weights: list[int]
    ) -> dict[str, np.ndarray]:
        eta, beta_1, beta_2, tau = (self.args[k] for k in ("eta", "beta_1", "beta_2", "tau"))
        out = {}
        for name, base in x.items():
            total = np.zeros(base.shape, np.float64)
            for update, weight in zip(updates, weights, strict=True):
                total += update[name].astype(np.float64) * float(weight)
            if base.dtype.kind == "i":  # integers take the weighted mean, rounded
                out[name] = np.rint(total / sum(weights)).astype(base.dtype)
                continue
            mean = (total / float(sum(weights))).astype(base.dtype)  # as fed_avg stores it
            d = mean.astype(np.float64) - base.astype(np.float64)
            m = (1 - beta_1) * d + beta_1 * self.m.get(name, 0.0)
            before, squared = self.v.get(name, 0.0), d * d
            if self.yogi:
                v = before - (1 - beta_2) * squared * np.sign(before - squared)
            else:
                v = beta_2 * before + (1 - beta_2) * squared
            self.m[name], self.v[name] = m, v
            out[name] = (base.astype(np.float64) + eta * m / (np.sqrt(v) + tau)).astype(base.dtype)
        return out


def _send_round(url: str, model_id: int, uuids: list[str], seed: int) -> list[dict[str, Any]]:
    """Three clients send an update each (the third meets require_x_updates: a round)."""
    updates = [_update(seed + i) for i in range(3)]
    for uuid, update, n in zip(uuids, updates, EXAMPLES, strict=True):
        WebClient(model_id, uuid, url=url, codec="msgpack", retries=0).send_update(
            update, num_examples=n
        )
    return updates


def _latest(url: str, model_id: int, uuid: str) -> dict[str, np.ndarray]:
    client = WebClient(model_id, uuid, url=url, retries=0)
    latest = client.check_for_latest_model(update_after=0, like=_initial())
    assert latest is not None
    values: dict[str, np.ndarray] = latest["values"]
    return values


def _assert_equal(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    for name, array in want.items():
        assert got[name].dtype == array.dtype, name
        np.testing.assert_array_equal(got[name], array, err_msg=name)


@pytest.mark.parametrize("aggregator", ["fed_adam", "fed_yogi"])
def test_the_server_optimizer_follows_the_reference_across_a_restart(
    data_dir: Path, backend: str, aggregator: str
) -> None:
    reference = Reference(aggregator == "fed_yogi", ARGS)
    x = _initial()
    with running_server(data_dir) as (url, token):
        admin = AdminClient(url, token, retries=0)
        model = admin.create_model(
            "opt",
            aggregator=aggregator,
            aggregator_args=ARGS,
            requirement="require_x_updates",
            requirement_args=[3],
            initial_model=x,
        )
        assert model["aggregator_args"] == ARGS
        uuids = [WebClient(model["id"], url=url, retries=0).register() for _ in range(3)]
        for seed in (0, 10):
            updates = _send_round(url, model["id"], uuids, seed)
            x = reference.step(x, updates, EXAMPLES)
            _assert_equal(_latest(url, model["id"], uuids[0]), x)
    # A new server over the same data continues with the moments the last round kept.
    with running_server(data_dir) as (url, token):
        for seed in (20, 30):
            updates = _send_round(url, model["id"], uuids, seed)
            x = reference.step(x, updates, EXAMPLES)
            _assert_equal(_latest(url, model["id"], uuids[0]), x)
        assert len(AdminClient(url, token, retries=0).list_aggregates(model["id"])) == 4
    if backend != "sqlite":  # what follows reads the SQLite file
        return
    # One state per model: each round replaced the previous one's row and file.
    connection = sqlite3.connect(data_dir / "fma.sqlite3")
    rows = connection.execute("SELECT aggregator, blob FROM aggregator_states").fetchall()
    files = {row[0] for row in connection.execute("SELECT filename FROM blobs")}
    connection.close()
    assert [row[0] for row in rows] == [aggregator]
    on_disk = {path.name for path in (data_dir / "blobs").iterdir()}
    assert on_disk == files


def test_moments_start_afresh_after_a_round_of_another_aggregator(data_dir: Path) -> None:
    with running_server(data_dir) as (url, token):
        admin = AdminClient(url, token, retries=0)
        model = admin.create_model(
            "switch",
            aggregator="fed_adam",
            aggregator_args=ARGS,
            requirement="require_x_updates",
            requirement_args=[3],
            initial_model=_initial(),
        )
        uuids = [WebClient(model["id"], url=url, retries=0).register() for _ in range(3)]
        _send_round(url, model["id"], uuids, 0)
        patch = f"{url}/api/v1/models/{model['id']}/"
        headers = {"Authorization": f"Token {token}"}
        answer = requests.patch(patch, json={"aggregator": "fed_avg"}, headers=headers, timeout=10)
        assert answer.status_code == 200
        assert answer.json()["aggregator_args"] is None  # fed_adam's args went with it
        _send_round(url, model["id"], uuids, 10)
        x = _latest(url, model["id"], uuids[0])
        answer = requests.patch(
            patch,
            json={"aggregator": "fed_adam", "aggregator_args": ARGS},
            headers=headers,
            timeout=10,
        )
        assert answer.status_code == 200
        updates = _send_round(url, model["id"], uuids, 20)
        # Zero moments, as a model's first fed_adam round: the kept ones are stale.
        expected = Reference(False, ARGS).step(x, updates, EXAMPLES)
        _assert_equal(_latest(url, model["id"], uuids[0]), expected)


def test_a_first_round_without_initial_model_is_the_weighted_mean(data_dir: Path) -> None:
    with running_server(data_dir) as (url, token):
        admin = AdminClient(url, token, retries=0)
        model = admin.create_model(
            "no-initial",
            aggregator="fed_yogi",
            requirement="require_x_updates",
            requirement_args=[3],
        )
        uuids = [WebClient(model["id"], url=url, retries=0).register() for _ in range(3)]
        updates = _send_round(url, model["id"], uuids, 0)
        got = _latest(url, model["id"], uuids[0])
        for name in ("kernel", "bias"):
            total = sum(
                u[name].astype(np.float64) * float(n)
                for u, n in zip(updates, EXAMPLES, strict=True)
            )
            np.testing.assert_array_equal(got[name], (total / 100.0).astype(updates[0][name].dtype))


@pytest.mark.parametrize("aggregator", ["fed_adam", "median"])
def test_an_aggregator_feeds_sparse_aggregates(data_dir: Path, aggregator: str) -> None:
    # aggregate_fraction=1: every change is sent as a sparse step (float32 values), so the
    # stored aggregate is the aggregator's result to float32 precision.
    with running_server(data_dir) as (url, token):
        admin = AdminClient(url, token, retries=0)
        model = admin.create_model(
            "sparse",
            aggregator=aggregator,
            aggregator_args=ARGS if aggregator == "fed_adam" else None,
            aggregate_fraction=1.0,
            requirement="require_x_updates",
            requirement_args=[3],
            initial_model=_initial(),
        )
        uuids = [WebClient(model["id"], url=url, retries=0).register() for _ in range(3)]
        x = _initial()
        reference = Reference(False, ARGS)
        for seed in (0, 10):
            updates = _send_round(url, model["id"], uuids, seed)
            if aggregator == "fed_adam":
                expected = reference.step(x, updates, EXAMPLES)
            else:
                expected = {k: np.median(np.stack([u[k] for u in updates]), axis=0) for k in x}
            got = _latest(url, model["id"], uuids[0])
            for name in ("kernel", "bias"):
                assert got[name].dtype == x[name].dtype
                np.testing.assert_allclose(got[name], expected[name], rtol=1e-6, atol=1e-7)
            x = got  # the next round steps from the aggregate as stored
