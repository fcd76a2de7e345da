"""An update in each plugin codec goes through the reference server and comes back."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import ml_dtypes
import numpy as np
import pytest

from fma_connect import CodecRegistry, WebClient, build_codec_registry, plugin_manager
from fma_connect.admin import AdminClient

#: Each plugin codec, and one pairing of two plugins (zstd over safetensors).
CODECS = [
    "safetensors",
    "zstd+msgpack",
    "zstd+safetensors",
    "quantize-f16",
    "quantize-int8",
    "quantize-int8-sym",
    "example-raw",
]


class Server(NamedTuple):
    url: str
    admin_token: str
    registry: CodecRegistry


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The reference server and a client registry with the same codecs."""
    from fma_connect_zstd import ZstdCodec

    from fma_connect.server.testing import running_server

    registry = build_codec_registry(plugin_manager(strict=True))
    # Whether the zstd plugin wrapped safetensors depends on which plugin loaded first;
    # the documented pairing makes it certain, on both sides.
    if "zstd+safetensors" not in registry:
        registry.add(ZstdCodec(registry.get("safetensors")))
    data_dir: Path = tmp_path_factory.mktemp("server")
    with running_server(data_dir, registry=registry) as (url, token):
        yield Server(url, token, registry)


def _weights() -> dict[str, Any]:
    rng = np.random.default_rng(7)
    return {
        "dense.kernel": rng.normal(0, 0.1, size=(64, 32)).astype(np.float32),
        "dense.bias": rng.normal(0, 0.01, size=32).astype(np.float64),
        "norm.scale": np.ones(32, dtype=ml_dtypes.bfloat16),
    }


@pytest.mark.parametrize("name", CODECS)
def test_an_update_round_trips_through_the_reference_server(server: Server, name: str) -> None:
    codec = server.registry.get(name)
    sent = _weights()
    with AdminClient(server.url, server.admin_token) as admin:
        model = admin.create_model(f"plugin codec {name}")
        with WebClient(model["id"], url=server.url, codec=name, registry=server.registry) as client:
            update = client.send_update(sent)
            latest = client.check_for_latest_model()
        [stored] = admin.list_updates(model["id"])
    assert update["codec"] == name and stored["codec"] == name
    assert latest is not None and latest["aggregate"] is not None
    received = latest["values"]
    assert set(received) == set(sent)
    for key, before in sent.items():
        after = np.asarray(received[key])
        assert after.dtype == before.dtype and after.shape == before.shape, key
        if codec.lossless:
            assert after.tobytes() == before.tobytes(), key
        else:
            assert codec.tolerance(before, after), key  # type: ignore[attr-defined]
    if not codec.lossless:  # the update did cross the wire quantized
        assert received["dense.kernel"].tobytes() != sent["dense.kernel"].tobytes()
