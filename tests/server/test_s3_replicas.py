"""Two replicas sharing one PostgreSQL database and one bucket: any request, either one.

A load balancer may send each request of a client to any replica: chunks of one
resumable upload to both, its completion to either, the updates of one round to both,
and the aggregate's download to either.
"""

from __future__ import annotations

import itertools
import os
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
from fma_connect.server.testing import RunningServer, running_server

if TYPE_CHECKING:
    from s3_support import S3Bucket

    from fma_connect.server.pgcluster import Cluster

MSGPACK = MsgpackCodec.media_type
UPLOADS = "/api/v1/uploads/"
CHUNK = 64 << 10
_names = itertools.count()


@pytest.fixture
def replicas(
    tmp_path: Path, s3_blobs_url: str, s3_bucket: S3Bucket, request: pytest.FixtureRequest
) -> Iterator[tuple[RunningServer, RunningServer]]:
    """Two servers on one fresh PostgreSQL database and the test's bucket, each with its
    own data directory (scratch only)."""
    cluster: Cluster = request.getfixturevalue("postgres_cluster")
    name = f"replicas_{os.getpid()}_{next(_names)}"
    url = cluster.create_database(name)
    options: dict[str, Any] = {
        "database": url,
        "blobs": s3_blobs_url,
        "s3_endpoint_url": s3_bucket.endpoint_url,
    }
    try:
        with (
            running_server(tmp_path / "one", **options) as one,
            running_server(tmp_path / "two", **options) as two,
        ):
            yield one, two
    finally:
        cluster.drop_database(name)


def _payload(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    arrays = [(f"t{i}", rng.standard_normal(1 << 16).astype(np.float32)) for i in range(4)]
    return b"".join(bytes(memoryview(c)) for c in MsgpackCodec().encode(arrays))


def test_an_upload_whose_chunks_reach_both_replicas_completes_on_either(
    replicas: tuple[RunningServer, RunningServer], s3_bucket: S3Bucket
) -> None:
    one, two = replicas
    with AdminClient(one.url, one.admin_token, retries=0) as admin:
        model = admin.create_model("lb", requirement="require_x_updates", requirement_args=[9])
    client = WebClient(model["id"], url=one.url, codec="msgpack", retries=0)
    client.register()
    headers = {"CLIENT-UUID": client.uuid}
    body = _payload(1)
    chunks = [body[i : i + CHUNK] for i in range(0, len(body), CHUNK)]
    manifest = {
        "federated_model": model["id"],
        "media_type": MSGPACK,
        "size": len(body),
        "chunk_size": CHUNK,
        "chunks": [blake3.blake3(c).hexdigest() for c in chunks],
    }
    opened = requests.post(one.url + UPLOADS, json=manifest, headers=headers, timeout=30)
    assert opened.status_code == 201, opened.text
    upload = opened.json()["id"]
    for index, chunk in enumerate(chunks):
        replica = (one, two)[index % 2]
        put = requests.put(
            f"{replica.url}{UPLOADS}{upload}/chunks/{index}/",
            data=chunk,
            headers={**headers, "Content-Type": "application/octet-stream"},
            timeout=30,
        )
        assert put.status_code == 204, put.text
    state = requests.get(f"{one.url}{UPLOADS}{upload}/", headers=headers, timeout=30)
    assert state.json()["missing"] == []  # each replica sees the other's chunks
    done = requests.post(f"{two.url}{UPLOADS}{upload}/complete/", headers=headers, timeout=30)
    assert done.status_code == 201, done.text
    stored = requests.get(
        one.url + done.json()["data"], headers={**headers, "Accept": MSGPACK}, timeout=30
    )
    assert stored.status_code == 200 and stored.content == body
    assert s3_bucket.keys("fma/uploads/") == []


def test_a_round_fed_through_both_replicas_is_read_from_either(
    replicas: tuple[RunningServer, RunningServer],
) -> None:
    two = replicas[1]
    with AdminClient(two.url, two.admin_token, retries=0) as admin:
        model = admin.create_model(
            "lb-round", aggregator="fed_avg", requirement="require_x_updates", requirement_args=[2]
        )
    trees = [make_tree(seed) for seed in range(2)]
    senders = [WebClient(model["id"], url=r.url, codec="msgpack", retries=0) for r in replicas]
    for sender, tree in zip(senders, trees, strict=True):
        sender.register()
        sender.send_update(tree, num_examples=5)
    expected = reference_mean(trees, [5, 5], ["msgpack"] * 2)
    for sender in senders:
        latest = sender.check_for_latest_model(update_after=0)
        assert latest is not None
        assert_leaves_equal(latest["values"], expected)
