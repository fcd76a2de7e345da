"""Helpers of the framework tests: the wire, and a fake FMA service over responses.

A module of its own because a conftest cannot be imported by name (``tests/`` has one too).
"""

from __future__ import annotations

from typing import Any

import orjson
import responses

from fma_connect.codecs.base import Tensors
from fma_connect.plugins import default_codec_registry
from fma_connect.spec import flatten, restore_like
from fma_connect.testing import to_wire_and_back

#: Every installed lossless codec: the built-in msgpack and npz-b64, and any plugin's.
LOSSLESS = sorted(info.codec.name for info in default_codec_registry() if info.codec.lossless)

BASE = "http://fma.example"
API = f"{BASE}/api/v1"
UUID = "9b1c7e52-0000-4000-8000-00000000000f"


def over_the_wire(codec_name: str, tensors: Tensors) -> Tensors:
    """Encode with the named codec, serialise as a request would, and decode."""
    return to_wire_and_back(default_codec_registry().get(codec_name), tensors)


def round_trip(tree: Any, codec_name: str, like: Any = None) -> Any:
    """flatten -> encode -> decode -> restore (into ``like`` when given)."""
    tensors, spec = flatten(tree)
    received = over_the_wire(codec_name, tensors)
    return spec.restore(received) if like is None else restore_like(like, received)


class FakeFMA:
    """A model on an FMA service that serves the last update it received as the latest model.

    It answers like the reference service: JSON updates come back as JSON ``values``,
    binary ones as a body in their own media type with the ``FMA-Meta`` header.
    """

    def __init__(self, mock: responses.RequestsMock, model_id: int = 1) -> None:
        self.updates: list[tuple[str, bytes]] = []
        models = f"{API}/models/{model_id}"
        mock.post(f"{models}/register_client/", json={"uuid": UUID})
        mock.add_callback(responses.POST, f"{API}/model_updates/", callback=self._receive)
        mock.add_callback(responses.GET, f"{models}/get_latest_model/", callback=self._latest)

    def _receive(self, request: Any) -> tuple[int, dict[str, str], bytes]:
        body = request.body
        if not isinstance(body, bytes | str):  # a binary codec's Chunks
            body = b"".join(memoryview(chunk).cast("B") for chunk in body)
        raw = body.encode() if isinstance(body, str) else bytes(body)
        self.updates.append((request.headers["Content-Type"], raw))
        return 201, {}, orjson.dumps({"id": len(self.updates)})

    def _latest(self, request: Any) -> tuple[int, dict[str, str], bytes]:
        content_type, body = self.updates[-1]
        if content_type == "application/json":
            answer = {"values": orjson.loads(body)["data"], "aggregate": len(self.updates)}
            return 200, {"Content-Type": "application/json"}, orjson.dumps(answer)
        meta = orjson.dumps({"aggregate": len(self.updates)}).decode()
        return 200, {"Content-Type": content_type, "FMA-Meta": meta}, body
