"""Stored weights served in ranges, and downloads that resume after the link breaks."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import requests

from fma_connect import WebClient
from fma_connect.admin import AdminClient
from fma_connect.codecs.msgpack_numpy import MsgpackCodec
from fma_connect.server.testing import RunningServer

MSGPACK = MsgpackCodec.media_type


@pytest.fixture
def published(server: RunningServer, admin: AdminClient) -> tuple[WebClient, str]:
    """A client of a model whose latest aggregate (msgpack) is some 400 kB; its URL."""
    model = admin.create_model("ranges", requirement="require_x_updates", requirement_args=[1])
    client = WebClient(model["id"], url=server.url, codec="msgpack", retries=0)
    client.register()
    rng = np.random.default_rng(0)
    client.send_update({"w": rng.standard_normal(100_000).astype(np.float32)})
    return client, f"{server.url}/api/v1/models/{model['id']}/get_latest_model/"


def _get(client: WebClient, url: str, **headers: str) -> requests.Response:
    return requests.get(
        url, headers={"CLIENT-UUID": client.uuid, "Accept": MSGPACK, **headers}, timeout=30
    )


def test_stored_weights_come_in_any_span_asked_for(published: tuple[WebClient, str]) -> None:
    client, url = published
    whole = _get(client, url)
    assert whole.status_code == 200 and whole.headers["Accept-Ranges"] == "bytes"
    etag = whole.headers["ETag"]
    assert etag.startswith('"') and etag.endswith('"')
    body, size = whole.content, len(whole.content)
    for asked, (start, end) in {
        "bytes=1000-": (1000, size),
        "bytes=10-19": (10, 20),
        f"bytes=0-{size + 50}": (0, size),
        "bytes=-64": (size - 64, size),
    }.items():
        part = _get(client, url, Range=asked, **{"If-Range": etag})
        assert part.status_code == 206, asked
        assert part.content == body[start:end]
        assert part.headers["Content-Range"] == f"bytes {start}-{end - 1}/{size}"
        assert part.headers["FMA-Meta"] == whole.headers["FMA-Meta"]


def test_a_range_of_another_version_or_form_gets_the_whole_body(
    published: tuple[WebClient, str],
) -> None:
    client, url = published
    whole = _get(client, url)
    for headers in (
        {"Range": "bytes=100-", "If-Range": '"another-blob"'},
        {"Range": "bytes=0-9,20-29"},  # several spans: not split
        {"Range": "items=0-9"},
    ):
        answer = _get(client, url, **headers)
        assert answer.status_code == 200 and answer.content == whole.content


def test_a_span_past_the_end_is_416_with_the_size(published: tuple[WebClient, str]) -> None:
    client, url = published
    size = len(_get(client, url).content)
    answer = _get(client, url, Range=f"bytes={size}-")
    assert answer.status_code == 416
    assert answer.headers["Content-Range"] == f"bytes */{size}"
    assert str(size) in answer.json()["detail"]


def test_weights_made_for_the_request_are_not_offered_in_ranges(
    published: tuple[WebClient, str],
) -> None:
    client, url = published
    converted = _get(client, url, Accept="application/json; codec=npz-b64")
    assert converted.status_code == 200
    assert "Accept-Ranges" not in converted.headers and "ETag" not in converted.headers
    ranged = _get(client, url, Accept="application/json", Range="bytes=0-9")
    assert ranged.status_code == 200


def test_a_download_cut_mid_body_resumes_where_it_stopped(
    server: RunningServer, published: tuple[WebClient, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import fma_connect._downloads as downloads
    import fma_connect._transport as transport

    client, _ = published
    expected = client.check_for_latest_model()
    assert expected is not None
    real = downloads.Download._read
    cuts: list[int] = []

    def breaking(self: downloads.Download, window: Any, until: int) -> Any:
        # Each read stops 100 kB further on, as a link dropping every 100 kB would.
        stop = min(until, self.got + 100_000)
        error = real(self, window, stop)
        if error is None and stop < until:
            cuts.append(self.got)
            return ConnectionResetError("cut by the test")
        return error

    seen: list[int] = []
    monkeypatch.setattr(downloads.Download, "_read", breaking)
    monkeypatch.setattr(transport.Transport, "_backoff", lambda *_: 0.0)
    resuming = WebClient(
        client.federated_model_id,
        uuid=client.uuid,
        url=server.url,
        codec="msgpack",
        retries=1,
        progress=lambda done, total: seen.append(done),
    )
    got = resuming.check_for_latest_model()
    assert got is not None and len(cuts) >= 3
    assert np.array_equal(got["values"]["w"], expected["values"]["w"])
    assert seen == sorted(seen)  # progress never goes back


def test_aggregate_results_and_artifact_values_come_in_ranges_too(
    server: RunningServer, admin: AdminClient, published: tuple[WebClient, str]
) -> None:
    client, _ = published
    (aggregate,) = admin.list_aggregates(client.federated_model_id)
    artifact = admin.publish(aggregate["id"], "1.0.0")
    for path in (
        f"/api/v1/model_aggregates/{aggregate['id']}/result/",
        f"/api/v1/model_artifacts/{artifact['id']}/values/",
    ):
        whole = _get(client, server.url + path)
        assert whole.status_code == 200 and whole.headers["Accept-Ranges"] == "bytes", path
        part = _get(
            client, server.url + path, Range="bytes=500-", **{"If-Range": whole.headers["ETag"]}
        )
        assert part.status_code == 206 and part.content == whole.content[500:], path
