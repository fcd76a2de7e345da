"""Robust aggregators through real rounds: one poisoned client moves the mean, not them."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from fma_connect import APIError, WebClient
from fma_connect.admin import AdminClient
from fma_connect.server.aggregators import held
from fma_connect.server.testing import RunningServer, running_server

#: How far off the poisoned client's values are.
POISON = 1e6


def _initial() -> dict[str, np.ndarray]:
    return {"kernel": np.zeros((4, 3), np.float32), "bias": np.zeros(3, np.float64)}


def _honest(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "kernel": rng.uniform(-1, 1, (4, 3)).astype(np.float32),
        "bias": rng.uniform(-1, 1, 3),
    }


def _round(
    server: RunningServer,
    admin: AdminClient,
    aggregator: str,
    args: dict[str, float] | None,
    codecs: list[str],
) -> tuple[dict[str, np.ndarray], list[dict[str, np.ndarray]]]:
    """Honest clients and one poisoned client send an update each; the admin runs the
    round; return what a client then downloads, and the honest updates."""
    model = admin.create_model(
        aggregator, aggregator=aggregator, aggregator_args=args, initial_model=_initial()
    )
    honest = [_honest(seed) for seed in range(len(codecs) - 1)]
    poisoned = {name: (array + POISON).astype(array.dtype) for name, array in honest[0].items()}
    clients = []
    for codec, tree in zip(codecs, [*honest, poisoned], strict=True):
        client = WebClient(model["id"], url=server.url, codec=codec, retries=0)
        client.register()
        client.send_update(tree, num_examples=10)
        clients.append(client)
    admin.aggregate(model["id"])
    latest = clients[0].check_for_latest_model(like=_initial())
    assert latest is not None and latest["aggregate"] is not None
    return latest["values"], honest


def _within_honest(result: dict[str, np.ndarray], honest: list[dict[str, np.ndarray]]) -> bool:
    for name, values in result.items():
        column = np.stack([tree[name] for tree in honest])
        if not (np.all(values >= column.min(axis=0)) and np.all(values <= column.max(axis=0))):
            return False
    return True


@pytest.fixture
def round_server(data_dir: Path) -> Iterator[RunningServer]:
    """A server whose rounds run only when the admin triggers them."""
    with running_server(data_dir, auto_aggregate="off") as running:
        yield running


@pytest.mark.parametrize(
    ("aggregator", "args"),
    [("median", None), ("trimmed_mean", {"trim": 0.25})],
)
@pytest.mark.parametrize("codec", ["msgpack", "json"])
def test_a_robust_aggregator_resists_a_poisoned_client_where_the_mean_does_not(
    round_server: RunningServer, aggregator: str, args: dict[str, float] | None, codec: str
) -> None:
    admin = AdminClient(round_server.url, round_server.admin_token, retries=0)
    codecs = [codec] * 4  # three honest clients and one poisoned
    robust, honest = _round(round_server, admin, aggregator, args, codecs)
    assert _within_honest(robust, honest)
    assert robust["kernel"].dtype == np.float32 and robust["bias"].dtype == np.float64
    assert all(np.abs(values).max() <= 1 for values in robust.values())

    mean, honest = _round(round_server, admin, "fed_avg", None, codecs)
    assert not _within_honest(mean, honest)
    assert np.abs(mean["kernel"]).min() > POISON / 5  # a quarter of the poison came through


def test_the_median_of_a_round_is_the_middle_update_per_coordinate(
    round_server: RunningServer,
) -> None:
    admin = AdminClient(round_server.url, round_server.admin_token, retries=0)
    # Mixed codecs: views of binary blob files and plain JSON (spilled to disk).
    result, honest = _round(
        round_server, admin, "median", None, ["msgpack", "json", "npz-b64", "json", "msgpack"]
    )
    for name, values in result.items():
        column = np.stack([tree[name] for tree in honest]).astype(np.float64)
        # Four honest values and one poisoned (far above them all): the median of the
        # five is the third smallest, an honest one.
        expected = np.sort(np.concatenate([column, column[:1] + POISON]), axis=0)[2]
        np.testing.assert_array_equal(values, expected.astype(values.dtype))


def test_updates_past_the_open_file_limit_are_spilled_with_the_same_result(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    results = []
    for limit in (held.HOLD_FILES, 1):
        monkeypatch.setattr(held, "HOLD_FILES", limit)
        with running_server(data_dir / str(limit), auto_aggregate="off") as running:
            admin = AdminClient(running.url, running.admin_token, retries=0)
            result, _ = _round(running, admin, "median", None, ["msgpack"] * 5)
            results.append(result)
    for name in results[0]:
        np.testing.assert_array_equal(results[0][name], results[1][name])


def test_a_sparse_update_is_rebuilt_for_the_median(round_server: RunningServer) -> None:
    admin = AdminClient(round_server.url, round_server.admin_token, retries=0)
    result, honest = _round(round_server, admin, "median", None, ["sparse", "msgpack", "msgpack"])
    for name, values in result.items():
        column = np.stack([honest[0][name], honest[1][name], honest[0][name] + POISON])
        np.testing.assert_array_equal(values, np.median(column, axis=0).astype(values.dtype))


def test_a_complex_update_is_refused_by_the_median(round_server: RunningServer) -> None:
    admin = AdminClient(round_server.url, round_server.admin_token, retries=0)
    model = admin.create_model("complex", aggregator="median")  # JSON has no complex numbers
    client = WebClient(model["id"], url=round_server.url, codec="msgpack", retries=0)
    client.register()
    client.send_update({"z": np.ones(2, np.complex128)})
    with pytest.raises(APIError, match="complex, which median cannot order") as refused:
        admin.aggregate(model["id"])
    assert refused.value.status_code == 400


N = 1 << 20  # a 4 MiB float32 model


@pytest.mark.parametrize("aggregator", ["median", "trimmed_mean"])
def test_a_robust_round_needs_the_models_memory_not_a_copy_per_update(
    round_server: RunningServer, aggregator: str
) -> None:
    rng = np.random.default_rng(5)
    initial = {"w": np.zeros(N, np.float32)}
    admin = AdminClient(round_server.url, round_server.admin_token, retries=0)
    model = admin.create_model(aggregator, aggregator=aggregator, initial_model=initial)
    clients = 10
    for _ in range(clients):
        client = WebClient(model["id"], url=round_server.url, codec="msgpack", retries=0)
        client.register()
        client.send_update({"w": rng.standard_normal(N).astype(np.float32)})
    tracemalloc.start()
    try:
        admin.aggregate(model["id"])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Ten updates of 4 MiB each: held as views of their files, read a 2 MiB stack (a slice
    # of every update, in float64) at a time, the result computed into its own file.
    assert peak < 2 * 4 * N, f"peak {peak / (4 * N):.2f} x the model"
