"""Model administration: create with clients, PATCH, DELETE, listing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import requests

from fma_connect import APIError, WebClient
from fma_connect.admin import AdminClient
from fma_connect.server.testing import RunningServer


def test_patch_changes_fields_and_clients(server: RunningServer, admin: AdminClient) -> None:
    first = WebClient(1, url=server.url, retries=0)
    model = admin.create_model("patch")
    assert model["id"] == 1
    first.register()
    second = WebClient(model["id"], url=server.url, retries=0)
    second.register()
    assert admin.get_model(model["id"])["clients"] == [first.uuid, second.uuid]
    response = requests.patch(
        f"{server.url}/api/v1/models/{model['id']}/",
        json={
            "requirement": "require_x_updates",
            "requirement_args": [2],
            "clients": [second.uuid],
        },
        headers={"Authorization": f"Token {server.admin_token}"},
        timeout=10,
    )
    assert response.status_code == 200
    patched = response.json()
    assert (patched["requirement"], patched["requirement_args"]) == ("require_x_updates", [2])
    assert patched["clients"] == [second.uuid]
    assert patched["name"] == "patch"
    with pytest.raises(APIError) as removed:
        first.send_update([np.ones(2)])
    assert removed.value.status_code == 403
    bad = requests.patch(
        f"{server.url}/api/v1/models/{model['id']}/",
        json={"requirement_args": [0]},
        headers={"Authorization": f"Token {server.admin_token}"},
        timeout=10,
    )
    assert bad.status_code == 400
    assert "requirement_args" in bad.json()


def test_delete_removes_the_model_and_its_blobs(
    server: RunningServer, admin: AdminClient, data_dir: Path
) -> None:
    keep = admin.create_model("keep", allow_aggregation=False)
    doomed = admin.create_model("doomed", initial_model=[np.zeros(3)])
    WebClient(keep["id"], url=server.url, retries=0).send_update([np.ones(3)])
    WebClient(doomed["id"], url=server.url, retries=0).send_update([np.ones(3)])
    assert len(list((data_dir / "blobs").iterdir())) == 4  # initial model, 2 updates, aggregate
    admin.delete_model(doomed["id"])
    assert [m["id"] for m in admin.list_models()] == [keep["id"]]
    with pytest.raises(APIError) as gone:
        admin.get_model(doomed["id"])
    assert gone.value.status_code == 404
    assert len(list((data_dir / "blobs").iterdir())) == 1
    assert len(admin.list_updates(keep["id"])) == 1
