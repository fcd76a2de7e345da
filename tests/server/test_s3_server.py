"""The reference server with its blobs in S3 (moto on loopback): the same answers, and
every payload in the bucket, none in the data directory."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import blake3
import numpy as np
import pytest
import requests
from server_helpers import assert_leaves_equal, make_tree, reference_mean

from fma_connect import WebClient
from fma_connect.admin import AdminClient
from fma_connect.codecs.msgpack_numpy import MsgpackCodec
from fma_connect.server.object_store import MIN_PART_SIZE
from fma_connect.server.testing import RunningServer, running_server

if TYPE_CHECKING:
    from s3_support import S3Bucket

MSGPACK = MsgpackCodec.media_type
UPLOADS = "/api/v1/uploads/"


@pytest.fixture
def s3_server(tmp_path: Path, s3_blobs_url: str, s3_bucket: S3Bucket) -> Iterator[RunningServer]:
    with running_server(
        tmp_path / "data", blobs=s3_blobs_url, s3_endpoint_url=s3_bucket.endpoint_url
    ) as running:
        yield running


@pytest.fixture
def s3_admin(s3_server: RunningServer) -> Iterator[AdminClient]:
    with AdminClient(s3_server.url, s3_server.admin_token, retries=0) as client:
        yield client


def _blob_keys(bucket: S3Bucket) -> list[str]:
    return bucket.keys("fma/blobs/")


def _no_local_blobs(data_dir: Path) -> None:
    local = data_dir / "blobs"
    assert not local.exists() or not any(local.iterdir())


@pytest.mark.parametrize("codec", ["json", "msgpack"])
def test_rounds_and_downloads_run_on_blobs_in_the_bucket(
    s3_server: RunningServer,
    s3_admin: AdminClient,
    s3_bucket: S3Bucket,
    tmp_path: Path,
    codec: str,
) -> None:
    model = s3_admin.create_model(
        "s3", aggregator="fed_avg", requirement="require_x_updates", requirement_args=[3]
    )
    clients = [WebClient(model["id"], url=s3_server.url, codec=codec, retries=0) for _ in "abc"]
    trees = [make_tree(seed) for seed in range(3)]
    for client, tree, examples in zip(clients, trees, [10, 30, 60], strict=True):
        client.register()
        client.send_update(tree, num_examples=examples)
    expected = reference_mean(trees, [10, 30, 60], [codec] * 3)
    for client in clients:
        latest = client.check_for_latest_model(update_after=0)
        assert latest is not None
        assert_leaves_equal(latest["values"], expected)
    # The three updates and the aggregate (and no more: nothing half-written stays).
    assert len(_blob_keys(s3_bucket)) == 4
    assert s3_bucket.multipart_uploads() == []
    _no_local_blobs(tmp_path / "data")


def test_an_aggregate_is_served_in_ranges_from_the_bucket(
    s3_server: RunningServer, s3_admin: AdminClient
) -> None:
    model = s3_admin.create_model("ranges", requirement="require_x_updates", requirement_args=[1])
    client = WebClient(model["id"], url=s3_server.url, codec="msgpack", retries=0)
    client.register()
    rng = np.random.default_rng(3)
    client.send_update({"w": rng.standard_normal(3 << 18).astype(np.float32)})
    aggregate = s3_admin.list_aggregates(model["id"])[0]
    url = s3_server.url + aggregate["result"]
    headers = {"CLIENT-UUID": client.uuid, "Accept": MSGPACK}
    whole = requests.get(url, headers=headers, timeout=30)
    assert whole.status_code == 200 and whole.headers["Accept-Ranges"] == "bytes"
    assert len(whole.content) > 3 << 20  # more than one stream chunk
    start = (1 << 20) - 5
    part = requests.get(url, headers={**headers, "Range": f"bytes={start}-"}, timeout=30)
    assert part.status_code == 206 and part.content == whole.content[start:]
    tail = requests.get(url, headers={**headers, "Range": "bytes=-7"}, timeout=30)
    assert tail.status_code == 206 and tail.content == whole.content[-7:]
    past = requests.get(url, headers={**headers, "Range": f"bytes={10 << 20}-"}, timeout=30)
    assert past.status_code == 416


@pytest.mark.parametrize("chunk_size", [MIN_PART_SIZE, 256 << 10])
def test_resumable_uploads_complete_into_a_blob_in_the_bucket(
    s3_server: RunningServer,
    s3_admin: AdminClient,
    s3_bucket: S3Bucket,
    tmp_path: Path,
    chunk_size: int,
) -> None:
    """Chunks of 5 MiB+ become the blob by the store's own copy; smaller ones are uploaded."""
    model = s3_admin.create_model("big", requirement="require_x_updates", requirement_args=[9])
    client = WebClient(
        model["id"],
        url=s3_server.url,
        codec="msgpack",
        retries=0,
        resumable_from=1 << 20,
        upload_chunk_size=chunk_size,
    )
    client.register()
    rng = np.random.default_rng(11)
    weights = {f"layer{i}": rng.standard_normal(1 << 19).astype(np.float32) for i in range(6)}
    first = client.send_update(weights)
    stored = _stored(s3_server, client, first)
    assert all(np.array_equal(dict(stored)[k], v) for k, v in weights.items())
    # An update sharing most chunks: those are copied from the first update's blob.
    weights["layer2"] = weights["layer2"] + 1
    second = client.send_update(weights)
    assert np.array_equal(dict(_stored(s3_server, client, second))["layer2"], weights["layer2"])
    assert s3_bucket.keys("fma/uploads/") == []  # the chunks went with the completions
    assert len(_blob_keys(s3_bucket)) == 2
    assert s3_bucket.multipart_uploads() == []
    _no_local_blobs(tmp_path / "data")


def _stored(server: RunningServer, client: WebClient, update: dict[str, Any]) -> Any:
    response = requests.get(
        server.url + update["data"],
        headers={"CLIENT-UUID": client.uuid, "Accept": MSGPACK},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return MsgpackCodec().decode(bytearray(response.content))


def test_a_deleted_model_takes_its_objects_with_it(
    s3_server: RunningServer, s3_admin: AdminClient, s3_bucket: S3Bucket
) -> None:
    model = s3_admin.create_model("gone", requirement="require_x_updates", requirement_args=[1])
    client = WebClient(model["id"], url=s3_server.url, codec="msgpack", retries=0)
    client.register()
    client.send_update(make_tree(1))
    assert _blob_keys(s3_bucket)
    s3_admin.delete_model(model["id"])
    assert _blob_keys(s3_bucket) == []


def test_a_restarted_server_serves_what_the_bucket_holds(
    tmp_path: Path, s3_blobs_url: str, s3_bucket: S3Bucket
) -> None:
    options: dict[str, Any] = {"blobs": s3_blobs_url, "s3_endpoint_url": s3_bucket.endpoint_url}
    with running_server(tmp_path / "data", **options) as first:
        with AdminClient(first.url, first.admin_token, retries=0) as admin:
            model = admin.create_model(
                "kept", requirement="require_x_updates", requirement_args=[1]
            )
        client = WebClient(model["id"], url=first.url, codec="msgpack", retries=0)
        client.register()
        client.send_update(make_tree(5), num_examples=1)
        before = _latest(first, model["id"], client.uuid)
    with running_server(tmp_path / "data", **options) as second:
        with AdminClient(second.url, second.admin_token, retries=0) as admin:
            assert len(admin.list_aggregates(model["id"])) == 1
        after = _latest(second, model["id"], client.uuid)
    assert len(before) == 3 and after.keys() == before.keys()
    assert all(np.array_equal(after[name], before[name]) for name in before)


def _latest(server: RunningServer, model_id: int, uuid: str) -> dict[str, np.ndarray]:
    """The latest model's tensors by name, as a client that never sent an update reads them."""
    client = WebClient(model_id, uuid, url=server.url, codec="msgpack", retries=0)
    latest = client.check_for_latest_model(update_after=0)
    assert latest is not None
    values = latest["values"]
    return dict(values) if isinstance(values, list) else dict(values.items())


def _open_with_chunks(server: RunningServer, model_id: int, uuid: str, chunks: int) -> str:
    """Open a resumable upload of a 64 KiB-chunked payload and PUT its first ``chunks``."""
    rng = np.random.default_rng(model_id)
    body = rng.integers(0, 256, 5 * (64 << 10), dtype=np.uint8).tobytes()
    pieces = [body[i : i + (64 << 10)] for i in range(0, len(body), 64 << 10)]
    manifest = {
        "federated_model": model_id,
        "media_type": MSGPACK,
        "size": len(body),
        "chunk_size": 64 << 10,
        "chunks": [blake3.blake3(piece).hexdigest() for piece in pieces],
    }
    headers = {"CLIENT-UUID": uuid}
    opened = requests.post(server.url + UPLOADS, json=manifest, headers=headers, timeout=30)
    assert opened.status_code == 201, opened.text
    upload: str = opened.json()["id"]
    for index in range(chunks):
        put = requests.put(
            f"{server.url}{UPLOADS}{upload}/chunks/{index}/",
            data=pieces[index],
            headers={**headers, "Content-Type": "application/octet-stream"},
            timeout=30,
        )
        assert put.status_code == 204, put.text
    return upload


def test_abandoned_uploads_and_those_of_a_deleted_model_leave_no_chunks(
    s3_server: RunningServer, s3_admin: AdminClient, s3_bucket: S3Bucket
) -> None:
    model = s3_admin.create_model("up", requirement="require_x_updates", requirement_args=[9])
    client = WebClient(model["id"], url=s3_server.url, retries=0)
    client.register()
    abandoned = _open_with_chunks(s3_server, model["id"], client.uuid, 2)
    assert s3_bucket.keys(f"fma/uploads/{abandoned}/") == [
        f"fma/uploads/{abandoned}/{i:05d}" for i in range(2)
    ]
    gone = requests.delete(
        f"{s3_server.url}{UPLOADS}{abandoned}/", headers={"CLIENT-UUID": client.uuid}, timeout=30
    )
    assert gone.status_code == 204
    assert s3_bucket.keys("fma/uploads/") == []
    _open_with_chunks(s3_server, model["id"], client.uuid, 3)
    assert len(s3_bucket.keys("fma/uploads/")) == 3
    s3_admin.delete_model(model["id"])
    assert s3_bucket.keys("fma/uploads/") == []


def test_expired_uploads_leave_no_chunks(
    tmp_path: Path, s3_blobs_url: str, s3_bucket: S3Bucket
) -> None:
    options: dict[str, Any] = {"blobs": s3_blobs_url, "s3_endpoint_url": s3_bucket.endpoint_url}
    with running_server(tmp_path / "data", upload_expiry=0.5, **options) as server:
        with AdminClient(server.url, server.admin_token, retries=0) as admin:
            model = admin.create_model("exp", requirement="require_x_updates", requirement_args=[9])
        client = WebClient(model["id"], url=server.url, retries=0)
        client.register()
        upload = _open_with_chunks(server, model["id"], client.uuid, 1)
        assert len(s3_bucket.keys("fma/uploads/")) == 1
        time.sleep(0.6)
        answer = requests.get(
            f"{server.url}{UPLOADS}{upload}/", headers={"CLIENT-UUID": client.uuid}, timeout=30
        )
        assert answer.status_code == 404 and "expired" in answer.json()["detail"]
        assert s3_bucket.keys("fma/uploads/") == []


def test_the_environment_fixture_puts_an_unchanged_servers_blobs_in_the_bucket(
    s3_blobs_env: str, s3_bucket: S3Bucket, tmp_path: Path
) -> None:
    """How the server suite runs on the object store: FMA_CONNECT_BLOBS, nothing else."""
    with (
        running_server(tmp_path / "data") as server,
        AdminClient(server.url, server.admin_token, retries=0) as admin,
    ):
        admin.create_model("env", initial_model=[[1.0, 2.0]])
    assert len(_blob_keys(s3_bucket)) == 1  # the initial model
    _no_local_blobs(tmp_path / "data")


def test_a_store_that_fails_is_answered_503_with_retry_after(
    s3_server: RunningServer, s3_admin: AdminClient, s3_bucket: S3Bucket
) -> None:
    model = s3_admin.create_model("away", requirement="require_x_updates", requirement_args=[2])
    client = WebClient(model["id"], url=s3_server.url, codec="msgpack", retries=0)
    client.register()
    s3_bucket.client.delete_bucket(Bucket=s3_bucket.name)  # empty: nothing stored yet
    url = f"{s3_server.url}/api/v1/model_updates/"
    body = b"".join(bytes(c) for c in MsgpackCodec().encode([("w", np.ones(4, np.float32))]))
    answer = requests.post(
        url,
        data=body,
        params={"federated_model": model["id"]},
        headers={"CLIENT-UUID": client.uuid, "Content-Type": MSGPACK},
        timeout=30,
    )
    assert answer.status_code == 503, answer.text
    assert answer.headers["Retry-After"] == "5"
    assert answer.json() == {"detail": "The payload store is unavailable; try again shortly."}
    assert s3_admin.list_updates(model["id"]) == []  # nothing half-stored
