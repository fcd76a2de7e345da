"""Corruption and truncation in transit (and at rest) are detected and reported as such.

A proxy between the client and the real server damages bodies: the msgpack codec's
per-tensor crc32 and npz-b64's zip CRC-32s catch a flipped bit in the tensor bytes,
msgpack's header crc32 one in a tensor's name, in either direction, and a body cut
short is reported as truncated. Plain ``json``
has no checksum: damage that still parses as numbers goes unnoticed (HTTP/TLS is its
only protection), which the documentation says.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from fault_proxy import Exchange, Fault, Plan, fault_proxy
from reliability_figures import Figures

from fma_connect import APIError, ConnectError, DecodeError, WebClient
from fma_connect.admin import AdminClient
from fma_connect.server.testing import RunningServer

INITIAL: dict[str, np.ndarray] = {
    "w": np.linspace(-1, 1, 64, dtype=np.float32).reshape(8, 8),
    "b": np.zeros(8),
}
LATEST = "get_latest_model"
INVALID = 4


@pytest.fixture
def model_id(server: RunningServer, admin: AdminClient, request: pytest.FixtureRequest) -> int:
    """A model whose latest aggregate is INITIAL, stored in the test's codec."""
    model = admin.create_model("integrity")
    codec = request.node.callspec.params["codec"]
    WebClient(model["id"], url=server.url, codec=codec, retries=0).send_update(INITIAL)
    assert len(admin.list_aggregates(model["id"])) == 1
    return int(model["id"])


def _flip_last_byte(body: bytes) -> bytes:
    # The last bytes of a msgpack body are its last tensor's (no padding after it).
    return body[:-1] + bytes([body[-1] ^ 0x10])


def _flip_in_a_name(body: bytes) -> bytes:
    # Tensor "w" becomes "v" in the msgpack header: only the header's crc32 can tell.
    at = body.index(b"\xa4name\xa1w") + 6
    return body[:at] + bytes([body[at] ^ 0x01]) + body[at + 1 :]


def _flip_inside_npz(body: bytes) -> bytes:
    # Flip one bit of the archive's tensor bytes, keeping the base64 text valid.
    found = re.search(rb'"payload":\s*"([A-Za-z0-9+/=]+)"', body)
    assert found is not None, body[:200]
    archive = bytearray(base64.b64decode(found.group(1)))
    at = archive.find(INITIAL["w"].tobytes()[100:108])
    assert at > 0
    archive[at] ^= 0x01
    text = base64.b64encode(bytes(archive))
    return body[: found.start(1)] + text + body[found.end(1) :]


def _on(path_part: str, fault: Fault, method: str = "GET") -> Plan:
    def plan(exchange: Exchange) -> Fault | None:
        return fault if exchange.method == method and path_part in exchange.path else None

    return plan


@pytest.mark.parametrize(
    ("codec", "damage", "message"),
    [
        ("msgpack", _flip_last_byte, "corrupt: its crc32 does not match"),
        ("msgpack", _flip_in_a_name, "header is corrupt: its crc32 does not match"),
        ("npz-b64", _flip_inside_npz, "corrupt or truncated: Bad CRC-32"),
    ],
)
def test_a_download_damaged_in_transit_is_reported_corrupt(
    server: RunningServer,
    model_id: int,
    figures: Figures,
    codec: str,
    damage: Callable[[bytes], bytes],
    message: str,
) -> None:
    fault = Fault("damage-response", damage=damage)
    with fault_proxy(server.url, _on(LATEST, fault)) as proxy:
        client = WebClient(model_id, url=proxy.url, codec=codec, retries=0)
        with pytest.raises(DecodeError, match=message):
            client.check_for_latest_model(like=INITIAL)
    assert len(proxy.faults("damage-response")) == 1
    # Undamaged, the same download is fine.
    latest = WebClient(model_id, url=server.url, codec=codec).check_for_latest_model(like=INITIAL)
    assert latest is not None
    np.testing.assert_array_equal(latest["values"]["w"], INITIAL["w"])
    figures.add("integrity", f"{codec} downloads damaged in transit, detected", 1)


@pytest.mark.parametrize("codec", ["msgpack", "npz-b64", "json"])
def test_a_download_cut_short_is_reported_truncated(
    server: RunningServer, model_id: int, figures: Figures, codec: str
) -> None:
    # The connection closes after 100 bytes of the body: fewer than Content-Length.
    fault = Fault("truncate-response", keep=100)
    with fault_proxy(server.url, _on(LATEST, fault)) as proxy:
        client = WebClient(model_id, url=proxy.url, codec=codec, retries=0)
        with pytest.raises(DecodeError, match="truncated: got 100 of [0-9]+ bytes"):
            client.check_for_latest_model(like=INITIAL)
    figures.add("integrity", f"{codec} downloads cut short, detected", 1)


@pytest.mark.parametrize("codec", ["msgpack", "json"])
def test_a_download_reset_midway_is_reported_broken(
    server: RunningServer, model_id: int, codec: str
) -> None:
    fault = Fault("truncate-response", keep=100, reset=True)
    with fault_proxy(server.url, _on(LATEST, fault)) as proxy:
        client = WebClient(model_id, url=proxy.url, codec=codec, retries=0)
        with pytest.raises(ConnectError, match="broke"):
            client.check_for_latest_model(like=INITIAL)


@pytest.mark.parametrize(
    ("codec", "damage", "message"),
    [
        ("msgpack", _flip_last_byte, "corrupt: its crc32 does not match"),
        ("msgpack", _flip_in_a_name, "header is corrupt: its crc32 does not match"),
        ("npz-b64", _flip_inside_npz, "Bad CRC-32"),
    ],
)
def test_an_upload_damaged_in_transit_is_refused_and_not_stored(
    server: RunningServer,
    admin: AdminClient,
    figures: Figures,
    codec: str,
    damage: Callable[[bytes], bytes],
    message: str,
) -> None:
    model_id = admin.create_model("uploads")["id"]
    fault = Fault("damage-request", damage=damage)
    plan = _on("/model_updates/", fault, "POST")
    with fault_proxy(server.url, plan) as proxy:
        client = WebClient(model_id, url=proxy.url, codec=codec, retries=0)
        with pytest.raises(APIError) as refused:
            client.send_update(INITIAL)
    assert refused.value.status_code == 400
    assert message in str(refused.value.detail["data"])
    assert admin.list_updates(model_id) == []
    figures.add("integrity", f"{codec} uploads damaged in transit, refused", 1)


def test_an_update_corrupted_at_rest_is_refused_by_the_round(
    data_dir: Path, server: RunningServer, admin: AdminClient
) -> None:
    # The requirement is not met: the update waits, and the admin triggers the round.
    model = admin.create_model("at-rest", requirement="require_x_updates", requirement_args=[9])
    blobs = data_dir / "blobs"
    client = WebClient(model["id"], url=server.url, codec="msgpack", retries=0)
    before = set(blobs.iterdir())
    client.send_update(INITIAL)
    (blob,) = set(blobs.iterdir()) - before
    raw = bytearray(blob.read_bytes())
    raw[-1] ^= 0x01
    blob.write_bytes(bytes(raw))
    with pytest.raises(APIError) as refused:
        admin.aggregate(model["id"])
    assert refused.value.status_code == 400
    assert "crc32 does not match" in str(refused.value.detail)
    (update,) = admin.list_updates(model["id"])
    assert update["status"] == INVALID
    assert "corrupt" in update["status_reason"]
