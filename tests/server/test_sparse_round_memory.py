"""Rounds of ``sparse`` updates: held as their changes, averaged bit for bit, in O(model).

The server holds a sparse update as its base (a view of the base's file) and the
changes sent, and rebuilds it a slice at a time as it sums; the initial model is stored
in msgpack, so as a base it is a view of its file too, not a JSON parse.
"""

from __future__ import annotations

import mmap
import sqlite3
import tracemalloc
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from server_helpers import request

from fma_connect import WebClient
from fma_connect.admin import AdminClient
from fma_connect.codecs.context import CodecContext, MissingBaseError
from fma_connect.codecs.sparse_delta import SparseDeltaCodec, SparseTensor
from fma_connect.server import mean as mean_module
from fma_connect.server.mean import Accumulator, LazyTensor
from fma_connect.server.service import Service
from fma_connect.server.testing import RunningServer, running_server

Tensors = list[tuple[str, np.ndarray]]


def _model(rng: np.random.Generator) -> Tensors:
    """Every kind of tensor a sparse update carries: float16, float32 and float64 ones
    (one against a float64 base, as a plain JSON initial model is held), an int and a
    bool tensor (sent whole), an empty and a 0-d one."""
    return [
        ("h", rng.standard_normal((5, 7)).astype(np.float16)),
        ("f", rng.standard_normal(300).astype(np.float32)),
        ("d", rng.standard_normal((6, 9))),
        ("j", rng.standard_normal((4, 11)).astype(np.float32)),
        ("e", np.zeros((0, 3), np.float32)),
        ("s", np.array(rng.standard_normal(), np.float32)),
        ("n", rng.integers(-50, 50, 8).astype(np.int64)),
        ("b", rng.random(6) < 0.5),
    ]


def _trained(tensors: Tensors, rng: np.random.Generator) -> Tensors:
    out = []
    for name, array in tensors:
        if array.dtype.kind == "f":
            array = (array + rng.standard_normal(array.shape) * 0.1).astype(array.dtype)
        elif array.dtype.kind == "i":
            array = array + rng.integers(-3, 4, array.shape)
        else:
            array = rng.random(array.shape) < 0.5
        out.append((name, array))
    return out


def _mapped(tmp_path: Path, index: int, chunks: Sequence[Any]) -> mmap.mmap:
    """A payload as the server reads it: a read-only memory map of its file."""
    path = tmp_path / f"update-{index}"
    path.write_bytes(b"".join(bytes(memoryview(c).cast("B")) for c in chunks))
    with open(path, "rb") as file:
        return mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)


@pytest.mark.parametrize("values", ["ternary", "float16", "float32"])
# 5%: every update held; 60%: their changes pass the model's bytes, folded on the way.
@pytest.mark.parametrize("fraction", [0.05, 0.6])
@pytest.mark.parametrize("slice_elements", [7, mean_module.SLICE])
def test_sparse_updates_held_as_changes_average_as_their_dense_rebuilds(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    values: str,
    fraction: float,
    slice_elements: int,
) -> None:
    monkeypatch.setattr(mean_module, "SLICE", slice_elements)
    rng = np.random.default_rng(11)
    initial = _model(rng)
    aggregate = _trained(initial, rng)
    # The initial model held as plain JSON gives it (float64); aggregate 1 as it was stored.
    held: dict[int | None, Tensors] = {
        None: [(n, a.astype(np.float64) if a.dtype.kind == "f" else a) for n, a in initial],
        1: aggregate,
    }

    def bases(wanted: int | None) -> Tensors:
        if wanted not in held:
            raise MissingBaseError(wanted)
        return held[wanted]

    codec = SparseDeltaCodec(fraction, values)
    weights = [1.0, 3.0, 2.5, 7.0, 0.125, 1.0]
    payloads = []
    for i, _ in enumerate(weights):
        base = None if i % 2 else 1  # updates from either base in one round
        sent = _trained(held[base], rng)
        sent = [(n, a.astype(dict(initial)[n].dtype)) for n, a in sent]
        payloads.append(_mapped(tmp_path, i, codec.encode(sent, CodecContext(base, bases))))
    dense, lazy = Accumulator(), Accumulator()
    for payload, weight in zip(payloads, weights, strict=True):
        # What the server did before: every update rebuilt whole (and folded at once).
        assert dense.add(codec.decode(payload, CodecContext(bases=bases)), weight) is None
        update = codec.decode_lazily(payload, CodecContext(bases=bases))
        # The float tensors come as changes (the type checker holds them to LazyTensor).
        changes: list[LazyTensor] = [t for _, t in update if isinstance(t, SparseTensor)]
        assert len(changes) == 6
        assert lazy.add(update, weight) is None
    expected, got = dense.result(), lazy.result()
    assert [name for name, _ in got] == [name for name, _ in expected]
    for (name, want), (_, mean) in zip(expected, got, strict=True):
        assert (mean.dtype, mean.shape) == (want.dtype, want.shape), name
        assert mean.tobytes() == want.tobytes(), name


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_a_lazy_update_beyond_its_dtype_is_refused_as_its_dense_rebuild(tmp_path: Path) -> None:
    first = [("w", np.array([60000.0, 1.0], np.float16))]
    codec = SparseDeltaCodec(1.0, "float32", error_feedback=False)
    sent = [("w", np.array([60000.0, 2.0], np.float16))]
    # A change of 120000 from -60000, rebuilt on 60000: beyond float16, infinite.
    against = [("w", np.array([-60000.0, 1.0], np.float16))]
    payload = _mapped(tmp_path, 0, codec.encode(sent, CodecContext(None, lambda _: against)))
    context = CodecContext(bases=lambda _: first)
    reasons = []
    for update in (codec.decode(payload, context), codec.decode_lazily(payload, context)):
        acc = Accumulator()
        assert acc.add(first) is None
        reasons.append(acc.add(update))
        ((_, mean),) = acc.result()
        assert mean.tolist() == [60000.0, 1.0]
    assert reasons == ["tensor 'w' holds NaN or infinite values"] * 2


N = 1 << 20  # a 4 MiB float32 model


def _round_peaks(url: str, token: str, rounds: int = 2, clients: int = 5) -> list[float]:
    """Rounds of ``clients`` sparse updates; each round's tracemalloc peak / the model."""
    rng = np.random.default_rng(3)
    initial = {"w": rng.standard_normal(N).astype(np.float32)}
    admin = AdminClient(url, token)
    model = admin.create_model(
        "memory",
        initial_model=initial,
        requirement="require_x_updates",
        requirement_args=[10**6],  # rounds run when asked
    )["id"]
    senders = [WebClient(model, url=url, codec="sparse", retries=0) for _ in range(clients)]
    peaks = []
    for _ in range(rounds):
        for sender in senders:
            latest = sender.check_for_latest_model(like=initial)
            assert latest is not None
            step = rng.standard_normal(N).astype(np.float32) * 0.01
            sender.send_update(
                {"w": latest["values"]["w"] + step}, base_aggregate=latest["aggregate"]
            )
        tracemalloc.start()
        try:
            admin.aggregate(model)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        peaks.append(peak / (4 * N))
    return peaks


def test_a_round_of_sparse_updates_needs_about_the_models_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small slices, so the figure is what the round holds, not the slices' working memory.
    monkeypatch.setattr(mean_module, "SLICE", 1 << 14)
    with running_server(tmp_path / "data") as (url, token):
        peaks = _round_peaks(url, token)
    # The result is 1x. Rebuilding each update whole (and folding it into float64 sums)
    # costs 3x and more, and parsing a JSON initial model as the first round's base 2x
    # more; held as their changes, 5 updates of 1% cost ~0.05x.
    assert max(peaks) < 2.0, peaks


def _initial_blob(data_dir: Path, model_id: int) -> tuple[str, str | None]:
    """The codec and the kept names of a model's initial-model blob, from the database."""
    with sqlite3.connect(data_dir / "fma.sqlite3") as conn:
        codec, names = conn.execute(
            "SELECT b.codec, b.tensor_names FROM artifacts a JOIN blobs b ON a.blob = b.id "
            "WHERE a.federated_model = ? AND a.aggregate IS NULL",
            (model_id,),
        ).fetchone()
    return codec, names


@pytest.mark.parametrize(
    ("layers", "codec"),
    [
        ([[[1.5, -0.25], [3e-08, 2.0]], [0.1, 1e300], 7.5], "msgpack"),
        ([[1, 2, 3], [True, False]], "msgpack"),  # int64 and bool come back as they were sent
        ([[1, 2.5]], "json"),  # written back from float64 as [1.0, 2.5]: kept as sent
    ],
)
def test_the_initial_model_is_stored_in_msgpack_where_json_answers_stay_the_same(
    server: RunningServer, data_dir: Path, layers: list[Any], codec: str
) -> None:
    body = {"name": "initial", "developer": 1, "initial_model": layers}
    created = request(server, "POST", "/api/v1/models/", admin=True, json=body)
    assert created.status_code == 201, created.text
    model_id = created.json()["id"]
    assert _initial_blob(data_dir, model_id) == (codec, None)
    answer = request(server, "GET", f"/api/v1/models/{model_id}/get_latest_model/", admin=True)
    assert answer.headers["Content-Type"].startswith("application/json")
    assert answer.content == b'{"aggregate":null,"values":' + orjson.dumps(layers) + b"}"
    artifact = created.json()["current_artifact"]
    values = request(server, "GET", f"/api/v1/model_artifacts/{artifact}/values/", admin=True)
    assert values.content == orjson.dumps(layers)


def test_the_initial_model_keeps_its_names_in_msgpack(
    server: RunningServer, data_dir: Path, admin: AdminClient
) -> None:
    initial = {"kernel": np.ones((2, 3), np.float32), "bias": np.zeros(3, np.float32)}
    model = admin.create_model("named", initial_model=initial)
    assert _initial_blob(data_dir, model["id"]) == ("msgpack", None)
    client = WebClient(model["id"], url=server.url, codec="msgpack")
    latest = client.check_for_latest_model()
    assert latest is not None
    assert sorted(latest["values"]) == ["bias", "kernel"]
    assert all(latest["values"][k].tolist() == v.tolist() for k, v in initial.items())


def _sparse_round(server: RunningServer, initial: dict[str, np.ndarray]) -> bytes:
    """Two sparse updates from the initial model, averaged; the aggregate's msgpack bytes."""
    rng = np.random.default_rng(5)
    url = server.url
    admin = AdminClient(url, server.admin_token)
    model = admin.create_model(
        "legacy", initial_model=initial, requirement="require_x_updates", requirement_args=[2]
    )["id"]
    for _ in range(2):
        client = WebClient(model, url=url, codec="sparse", retries=0)
        latest = client.check_for_latest_model(like=initial)
        assert latest is not None
        trained = {
            k: v + (rng.standard_normal(v.shape) * 0.1).astype(v.dtype) for k, v in initial.items()
        }
        client.send_update(trained, base_aggregate=None)
    (aggregate,) = admin.list_aggregates(model)
    response = request(
        server,
        "GET",
        f"/api/v1/model_aggregates/{aggregate['id']}/result/",
        admin=True,
        headers={"Accept": "application/vnd.fma-connect.msgpack"},
    )
    assert response.status_code == 200, response.text
    return response.content


def test_a_json_initial_model_of_an_older_server_is_still_a_base(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    initial = {"w": np.random.default_rng(1).standard_normal(2000).astype(np.float32)}
    with running_server(tmp_path / "new") as server:
        stored_in_msgpack = _sparse_round(server, initial)
    # As servers stored it before: the JSON as it came.
    monkeypatch.setattr(Service, "_initial_as_binary", lambda self, blob, dtypes: blob)
    with running_server(tmp_path / "old") as server:
        stored_in_json = _sparse_round(server, initial)
    assert _initial_blob(tmp_path / "old", 1)[0] == "json"
    assert _initial_blob(tmp_path / "new", 1)[0] == "msgpack"
    assert stored_in_json == stored_in_msgpack
