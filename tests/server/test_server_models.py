"""Model administration: create with clients, PATCH, DELETE, listing."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pytest
import requests

from fma_connect import APIError, WebClient
from fma_connect.admin import AdminClient
from fma_connect.server.testing import RunningServer

if TYPE_CHECKING:
    from s3_support import StoredBlobs


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
    server: RunningServer, admin: AdminClient, stored_blobs: StoredBlobs
) -> None:
    keep = admin.create_model("keep", allow_aggregation=False)
    doomed = admin.create_model("doomed", initial_model=[np.zeros(3)])
    WebClient(keep["id"], url=server.url, retries=0).send_update([np.ones(3)])
    WebClient(doomed["id"], url=server.url, retries=0).send_update([np.ones(3)])
    assert len(stored_blobs.names()) == 4  # initial model, 2 updates, aggregate
    admin.delete_model(doomed["id"])
    assert [m["id"] for m in admin.list_models()] == [keep["id"]]
    with pytest.raises(APIError) as gone:
        admin.get_model(doomed["id"])
    assert gone.value.status_code == 404
    assert len(stored_blobs.names()) == 1
    assert len(admin.list_updates(keep["id"])) == 1


def test_an_initial_model_keeps_the_dtypes_the_admin_sent(
    server: RunningServer, admin: AdminClient
) -> None:
    rng = np.random.default_rng(0)
    initial: dict[str, np.ndarray] = {
        "w": rng.standard_normal((20, 3)).astype(np.float32),
        "h": rng.standard_normal(7).astype(np.float16),
        "steps": np.arange(4, dtype=np.int32),
        "mask": np.array([True, False]),
    }
    model = admin.create_model("typed", initial_model=initial)["id"]
    client = WebClient(model, url=server.url, codec="msgpack")
    latest = client.check_for_latest_model()  # no like=: what the server holds
    assert latest is not None
    values: dict[str, np.ndarray] = latest["values"]
    for name, array in initial.items():
        assert values[name].dtype == array.dtype
        assert values[name].tobytes() == array.tobytes()
    plain = WebClient(model, url=server.url).check_for_latest_model()
    assert plain is not None  # plain lists, in the order send_update uses (sorted names)
    layers: list[list[list[float]]] = plain["values"]
    assert np.array_equal(np.array(layers[3], np.float32), initial["w"])


@pytest.mark.parametrize(
    ("layers", "dtypes", "expected"),
    [
        ([[0.5, 1.0]], ["int32"], "Layer 0 (0) holds numbers that are not int32 values"),
        ([[1, 300]], ["uint8"], "not uint8 values"),
        ([[1e6]], ["float16"], "not float16 values"),
        ([[1.0]], ["float32", "float32"], "1 layers, got 2 dtypes"),
        ([[1.0]], ["object"], "unsupported dtype 'object'"),
        ([[1.0]], "float32", "Expected a list of dtype tags"),
    ],
)
def test_initial_model_dtypes_that_do_not_fit_are_refused(
    server: RunningServer, layers: list[object], dtypes: object, expected: str
) -> None:
    response = requests.post(
        f"{server.url}/api/v1/models/",
        json={
            "name": "bad",
            "developer": 1,
            "initial_model": layers,
            "initial_model_dtypes": dtypes,
        },
        headers={"Authorization": f"Token {server.admin_token}"},
        timeout=10,
    )
    assert response.status_code == 400, response.text
    assert expected in response.json()["initial_model_dtypes"][0]
