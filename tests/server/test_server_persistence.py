"""State survives restarts and crashes: the same data directory serves the same federation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import requests
from server_helpers import assert_leaves_equal, make_tree, reference_mean

from fma_connect import WebClient
from fma_connect.admin import AdminClient
from fma_connect.codecs.msgpack_numpy import MsgpackCodec
from fma_connect.server.testing import running_server, running_server_process

PENDING, COMPLETE = 0, 2


def test_everything_is_still_there_after_a_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    initial = make_tree(0)
    trees = [make_tree(1), make_tree(2)]
    with running_server(data) as (url, token):
        admin = AdminClient(url, token, retries=0)
        model = admin.create_model(
            "persist", requirement="require_x_updates", requirement_args=[2], initial_model=initial
        )
        one = WebClient(model["id"], url=url, codec="msgpack", retries=0)
        two = WebClient(model["id"], url=url, codec="npz-b64", retries=0)
        one.send_update(trees[0])
        two.send_update(trees[1])
        aggregate = one.check_for_new_model_aggregate()
        assert aggregate is not None
        artifact = admin.publish(aggregate["id"], "1.0.0")
        one.send_val_results({"loss": 0.5}, aggregate["id"])
        left_pending = make_tree(3)
        one.send_update(left_pending, base_aggregate=aggregate["id"])
        updates_before = admin.list_updates(model["id"])

    with running_server(data) as (url, same_token):
        assert same_token == token  # the stored admin token is kept
        admin = AdminClient(url, token, retries=0)
        assert admin.list_models() == [admin.get_model(model["id"])]
        assert admin.get_model(model["id"])["current_artifact"] == artifact["id"]
        assert admin.list_updates(model["id"]) == updates_before
        assert [u["status"] for u in updates_before] == [PENDING, COMPLETE, COMPLETE]
        assert [a["id"] for a in admin.list_aggregates(model["id"])] == [aggregate["id"]]

        # The same client UUIDs are still registered and see the same weights.
        one_again = WebClient(model["id"], uuid=one.uuid, url=url, codec="msgpack", retries=0)
        latest = one_again.check_for_latest_model(like=initial)
        assert latest is not None
        assert latest["aggregate"] == aggregate["id"]
        assert_leaves_equal(latest["values"], reference_mean(trees))
        current = one_again.get_current_artifact(like=initial)
        assert current is not None
        assert current["version"] == "1.0.0"
        assert_leaves_equal(current["values"], reference_mean(trees))

        # The update left pending before the restart joins the next round.
        two_again = WebClient(model["id"], uuid=two.uuid, url=url, codec="npz-b64", retries=0)
        fresh = make_tree(4)
        two_again.send_update(fresh, base_aggregate=aggregate["id"])
        second = one_again.check_for_new_model_aggregate(like=initial)
        assert second is not None
        assert second["parent"] == aggregate["id"]
        assert_leaves_equal(second["result"], reference_mean([left_pending, fresh]))


def test_an_acknowledged_update_survives_a_crash(tmp_path: Path) -> None:
    data = tmp_path / "data"
    weights = {"w": np.arange(1000, dtype=np.float32), "step": np.array(7, np.int64)}
    with running_server_process(data) as server:
        admin = AdminClient(server.url, server.admin_token, retries=0)
        model = admin.create_model("crash", requirement="require_x_updates", requirement_args=[2])
        client = WebClient(model["id"], url=server.url, codec="msgpack", retries=0)
        sent = client.send_update(weights)
        server.kill()  # SIGKILL right after the 201: nothing gets a chance to flush
        token = server.admin_token
    # What a crash in the middle of a write leaves: a temporary file and an unreferenced blob.
    (data / "blobs" / ".tmp-interrupted").write_bytes(b"half a payl")
    (data / "blobs" / "0123456789abcdef0123456789abcdef.blob").write_bytes(b"never committed")

    with running_server_process(data, admin_token=token) as server:
        admin = AdminClient(server.url, token, retries=0)
        (update,) = admin.list_updates(model["id"])
        assert update["id"] == sent["id"]
        assert update["status"] == PENDING
        response = requests.get(
            server.url + update["data"],
            headers={"CLIENT-UUID": client.uuid, "Accept": client.codec.media_type},
            timeout=10,
        )
        assert response.status_code == 200
        stored = dict(MsgpackCodec().decode(response.content))
        np.testing.assert_array_equal(stored["w"], weights["w"])
        assert stored["step"] == 7
        # Only the acknowledged update's blob is left.
        (remaining,) = (data / "blobs").iterdir()
        assert remaining.read_bytes() == response.content
