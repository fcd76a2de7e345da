"""Clients whose dicts list the same tensors in another order aggregate, and each gets its order."""

from __future__ import annotations

import numpy as np

from fma_connect import WebClient
from fma_connect.admin import AdminClient
from fma_connect.server.testing import RunningServer


def test_clients_with_different_key_orders_each_get_their_own_back(
    server: RunningServer, admin: AdminClient
) -> None:
    model = admin.create_model("order", requirement="require_x_updates", requirement_args=[2])
    first = WebClient(model["id"], url=server.url, codec="msgpack")
    second = WebClient(model["id"], url=server.url, codec="npz-b64")
    first.register()
    second.register()
    first.send_update({"a": np.ones(2, np.float32), "b": np.zeros(3, np.int16)})
    second.send_update({"b": np.full(3, 4, np.int16), "a": np.full(2, 3, np.float32)})

    mine = first.check_for_latest_model()
    theirs = second.check_for_latest_model()
    assert mine is not None and theirs is not None
    assert list(mine["values"]) == ["a", "b"] and list(theirs["values"]) == ["b", "a"]
    for values in (mine["values"], theirs["values"]):
        assert values["a"].tolist() == [2.0, 2.0] and values["a"].dtype == np.float32
        assert values["b"].tolist() == [2, 2, 2] and values["b"].dtype == np.int16
