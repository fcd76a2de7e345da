"""Updates sent as deltas against their base aggregate: rebuilt bit for bit, refused if unsound."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import requests

from fma_connect import APIError, ConfigurationError, WebClient
from fma_connect.admin import AdminClient
from fma_connect.codecs.msgpack_numpy import MsgpackCodec
from fma_connect.codecs.xor_delta import XorDeltaCodec
from fma_connect.server.testing import RunningServer
from fma_connect.testing import holding

MSGPACK = MsgpackCodec.media_type
RNG = np.random.default_rng(0)
INITIAL = {"w": (RNG.standard_normal((64, 32)) * 0.05).astype(np.float32), "b": np.zeros(32)}


def _trained(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {
        k: v + (RNG.standard_normal(v.shape) * 1e-3).astype(v.dtype) for k, v in weights.items()
    }


def _stored(server: RunningServer, client: WebClient, update_id: int) -> dict[str, Any]:
    response = requests.get(
        f"{server.url}/api/v1/model_updates/{update_id}/data/",
        headers={"CLIENT-UUID": client.uuid, "Accept": MSGPACK},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return dict(MsgpackCodec().decode(response.content))


def test_delta_updates_are_rebuilt_bit_for_bit_and_averaged(
    server: RunningServer, admin: AdminClient
) -> None:
    model = admin.create_model(
        "deltas", aggregator="fed_avg", requirement="all_clients", initial_model=INITIAL
    )
    clients = [WebClient(model["id"], url=server.url, codec="delta", retries=0) for _ in range(2)]
    for client in clients:
        client.register()
    base: int | None = None
    for _ in range(3):
        sent = []
        for client in clients:
            latest = client.check_for_latest_model()
            assert latest is not None and latest["aggregate"] == base
            weights = _trained(latest["values"])
            update = client.send_update(weights, base_aggregate=base, num_examples=3)
            assert update["codec"] == "delta"
            stored = _stored(server, client, update["id"])
            assert all(stored[k].tobytes() == weights[k].tobytes() for k in weights)
            sent.append(weights)
        (aggregate, *_) = sorted(admin.list_aggregates(model["id"]), key=lambda a: -a["id"])
        base = aggregate["id"]
        check = WebClient(model["id"], url=server.url, uuid=clients[0].uuid, codec="msgpack")
        mean = check.check_for_latest_model()
        assert mean is not None
        for name in INITIAL:
            expected = (sent[0][name].astype(np.float64) + sent[1][name]) / 2
            # fed_avg sums x * 3 and divides by 6: the same mean, rounded its own way.
            np.testing.assert_allclose(mean["values"][name], expected, rtol=1e-6, atol=1e-9)


def _raw_delta(
    server: RunningServer, client: WebClient, model_id: int, payload_base: int, field_base: int
) -> requests.Response:
    base = WebClient(model_id, url=server.url, uuid=client.uuid, codec="msgpack")
    latest = base.check_for_latest_model()
    assert latest is not None
    tensors = list(_trained(latest["values"]).items())
    context = holding(payload_base, list(latest["values"].items()))
    body = b"".join(
        bytes(memoryview(c).cast("B")) for c in XorDeltaCodec().encode(tensors, context)
    )
    return requests.post(
        f"{server.url}/api/v1/model_updates/",
        params={"federated_model": model_id, "base_aggregate": field_base},
        data=body,
        headers={"CLIENT-UUID": client.uuid, "Content-Type": XorDeltaCodec.media_type},
        timeout=10,
    )


def _with_aggregates(
    server: RunningServer, admin: AdminClient, name: str, count: int
) -> tuple[int, WebClient]:
    """A model whose every update makes an aggregate, with ``count`` of them made."""
    model = admin.create_model(name, requirement="require_x_updates", requirement_args=[1])
    client = WebClient(model["id"], url=server.url, codec="msgpack", retries=0)
    for _ in range(count):
        client.send_update(INITIAL)
    return model["id"], client


def test_a_delta_against_another_base_than_it_names_is_refused(
    server: RunningServer, admin: AdminClient
) -> None:
    model_id, client = _with_aggregates(server, admin, "names", 2)  # aggregates 1 and 2
    response = _raw_delta(server, client, model_id, payload_base=1, field_base=2)
    assert response.status_code == 400, response.text
    (reason,) = response.json()["base_aggregate"]
    assert "delta against aggregate 1" in reason and "base_aggregate 2" in reason


def test_a_delta_against_an_aggregate_the_model_lacks_is_refused_naming_it(
    server: RunningServer, admin: AdminClient
) -> None:
    model_id, client = _with_aggregates(server, admin, "lacks", 1)
    response = _raw_delta(server, client, model_id, payload_base=99, field_base=1)
    assert response.status_code == 400, response.text
    assert "aggregate 99" in response.json()["base_aggregate"][0]


def test_a_client_without_the_base_says_so_before_sending(
    server: RunningServer, admin: AdminClient
) -> None:
    model = admin.create_model("nobase", requirement="require_x_updates", requirement_args=[1])
    client = WebClient(model["id"], url=server.url, codec="delta", retries=0)
    with pytest.raises(Exception, match="against base_aggregate 42") as refused:
        client.send_update(INITIAL, base_aggregate=42)
    assert not isinstance(refused.value, APIError)
    assert admin.list_updates(model["id"]) == []


def test_a_delta_codecs_base_aggregate_must_be_an_id(
    server: RunningServer, admin: AdminClient
) -> None:
    model_id, client = _with_aggregates(server, admin, "ids", 1)
    delta = WebClient(model_id, url=server.url, uuid=client.uuid, codec="delta", retries=0)
    with pytest.raises(ConfigurationError, match="give the id"):
        delta.send_update(INITIAL, base_aggregate="1")  # type: ignore[arg-type]
    sent = delta.send_update(INITIAL, base_aggregate=np.int64(1))
    assert sent["base_aggregate"] == 1
