"""The sparse codec's error-feedback residual survives a client restart, and a failed send."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from fma_connect import APIError, ConfigurationError, WebClient
from fma_connect.admin import AdminClient
from fma_connect.codecs.context import save_state
from fma_connect.codecs.msgpack_numpy import MsgpackCodec
from fma_connect.server.testing import RunningServer

RNG = np.random.default_rng(0)
INITIAL = {"w": RNG.standard_normal(2_000).astype(np.float32)}
STEPS = [RNG.standard_normal(2_000).astype(np.float32) * 0.01 for _ in range(2)]


def _stored(server: RunningServer, uuid: str, update_id: int) -> bytes:
    response = requests.get(
        f"{server.url}/api/v1/model_updates/{update_id}/data/",
        headers={"CLIENT-UUID": uuid, "Accept": MsgpackCodec.media_type},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return dict(MsgpackCodec().decode(response.content))["w"].tobytes()


def _two_updates(
    server: RunningServer, admin: AdminClient, restart: bool, state: Path | None = None
) -> list[bytes]:
    """Two sparse updates from the initial model; with ``restart``, a new client between."""
    model = admin.create_model("state", initial_model=INITIAL, allow_aggregation=False)
    options: dict[str, Any] = {"codec": "sparse", "retries": 0}
    if state is not None:
        options["codec_state"] = state
    client = WebClient(model["id"], url=server.url, **options)
    client.register()
    assert client.check_for_latest_model() is not None  # the initial model: the base
    stored = []
    for i, step in enumerate(STEPS):
        if i == 1 and restart:
            uuid = client.uuid
            client = WebClient(model["id"], uuid=uuid, url=server.url, **options)
            assert client.check_for_latest_model() is not None
        update = client.send_update({"w": INITIAL["w"] + step})
        stored.append(_stored(server, client.uuid, update["id"]))
    return stored


def test_a_restarted_client_keeps_its_residual_in_its_state_file(
    server: RunningServer, admin: AdminClient, tmp_path: Path
) -> None:
    uninterrupted = _two_updates(server, admin, restart=False)
    restarted = _two_updates(server, admin, restart=True, state=tmp_path / "sparse.state")
    assert restarted == uninterrupted
    # Without the file, the restart forgets what the first update left out.
    forgetful = _two_updates(server, admin, restart=True)
    assert forgetful[0] == uninterrupted[0] and forgetful[1] != uninterrupted[1]


def test_a_failed_send_leaves_the_residual_as_it_was(
    server: RunningServer, admin: AdminClient, tmp_path: Path
) -> None:
    model = admin.create_model("fails", initial_model=INITIAL, allow_aggregation=False)
    state = tmp_path / "sparse.state"
    client = WebClient(model["id"], url=server.url, codec="sparse", retries=0, codec_state=state)
    client.register()
    client.check_for_latest_model()
    admin.delete_model(model["id"])
    with pytest.raises(APIError):
        client.send_update({"w": INITIAL["w"] + STEPS[0]})
    assert not state.exists()


def test_a_state_file_of_another_codec_or_a_codec_without_state_is_refused(
    tmp_path: Path,
) -> None:
    state = tmp_path / "other.state"
    save_state(state, "delta", {})
    with pytest.raises(ConfigurationError, match="state of the 'delta' codec"):
        WebClient(1, url="http://127.0.0.1:9", codec="sparse", codec_state=state)
    with pytest.raises(ConfigurationError, match="keeps none"):
        WebClient(1, url="http://127.0.0.1:9", codec="msgpack", codec_state=state)
