"""Shared helpers of the server tests: weight trees and a numpy reference of the averages."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson
import requests

from fma_connect.server.testing import RunningServer

#: Every built-in codec.
CODECS = ("json", "msgpack", "npz-b64")


def make_tree(seed: int) -> dict[str, Any]:
    """A small model: float32 kernel and bias, and an int32 counter tensor."""
    rng = np.random.default_rng(seed)
    return {
        "dense": {
            "kernel": rng.standard_normal((3, 4)).astype(np.float32),
            "bias": rng.standard_normal(4).astype(np.float32),
        },
        "count": rng.integers(0, 100, size=5).astype(np.int32),
    }


def leaves(tree: Any) -> list[np.ndarray]:
    """The arrays of a tree in flatten order."""
    if isinstance(tree, dict):
        return [leaf for value in tree.values() for leaf in leaves(value)]
    if isinstance(tree, list | tuple):
        return [leaf for value in tree for leaf in leaves(value)]
    return [np.asarray(tree)]


def as_json_sees_it(array: np.ndarray) -> np.ndarray:
    """What the server decodes from ``array`` sent by the json codec (shortest decimal text)."""
    return np.asarray(orjson.loads(orjson.dumps(array, option=orjson.OPT_SERIALIZE_NUMPY)))


def reference_mean(
    trees: Sequence[Any],
    weights: Sequence[float] | None = None,
    codecs: Sequence[str] | None = None,
) -> list[np.ndarray]:
    """The weighted mean the server must produce, leaf by leaf, in each leaf's dtype.

    Summed in float64 in arrival order from the values the server decodes (``codecs``
    per tree, default all lossless), as the server does, so floats compare exactly.
    """
    weights = list(weights) if weights is not None else [1.0] * len(trees)
    codecs = list(codecs) if codecs is not None else ["msgpack"] * len(trees)
    wire = [
        [as_json_sees_it(a) if codec == "json" else a for a in leaves(tree)]
        for tree, codec in zip(trees, codecs, strict=True)
    ]
    columns = zip(*wire, strict=True)
    originals = zip(*(leaves(t) for t in trees), strict=True)
    out = []
    for column, original in zip(columns, originals, strict=True):
        total = np.zeros(column[0].shape, np.float64)
        for array, weight in zip(column, weights, strict=True):
            term = array.astype(np.float64)
            if weight != 1.0:
                term *= weight
            total += term
        mean = total / float(sum(weights))
        dtype = original[0].dtype
        out.append(np.rint(mean).astype(dtype) if dtype.kind in "iu" else mean.astype(dtype))
    return out


def assert_leaves_equal(actual: Any, expected: Sequence[np.ndarray]) -> None:
    """Every leaf of ``actual`` equals the expected array exactly, with the same dtype."""
    got = leaves(actual)
    assert len(got) == len(expected)
    for array, want in zip(got, expected, strict=True):
        assert isinstance(array, np.ndarray)
        assert array.dtype == want.dtype, (array.dtype, want.dtype)
        np.testing.assert_array_equal(array, want)


def request(
    server: RunningServer, method: str, path: str, *, admin: bool = False, **kwargs: Any
) -> requests.Response:
    """Send a raw HTTP request to the test server (as the admin when ``admin``)."""
    headers = kwargs.pop("headers", {})
    if admin:
        headers["Authorization"] = f"Token {server.admin_token}"
    return requests.request(method, server.url + path, headers=headers, timeout=10, **kwargs)


def unregister(server: RunningServer, model_id: int, client: str) -> None:
    """Remove a client from a model (its updates already sent stay, and a round refuses them)."""
    clients = request(server, "GET", f"/api/v1/models/{model_id}/", admin=True).json()["clients"]
    response = request(
        server,
        "PATCH",
        f"/api/v1/models/{model_id}/",
        admin=True,
        json={"clients": [c for c in clients if c != client]},
    )
    assert response.status_code == 200, response.text


def json_error(response: requests.Response, status: int) -> Any:
    """Assert a JSON error answer with ``status`` and return its body."""
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    return response.json()


def reason(response: requests.Response, status: int, field: str) -> str:
    """Assert a JSON error answer with ``status`` about ``field``; return its messages joined."""
    body = json_error(response, status)
    assert field in body, body
    messages = body[field] if isinstance(body[field], list) else [body[field]]
    assert messages and all(isinstance(m, str) and m for m in messages), body
    return " ".join(messages)


def nested(depth: int, leaf: bytes = b"1", *, objects: bool = False) -> bytes:
    """JSON text nesting ``leaf`` in ``depth`` arrays (objects ``{"a": ...}`` if ``objects``)."""
    if objects:
        return b'{"a": ' * depth + leaf + b"}" * depth
    return b"[" * depth + leaf + b"]" * depth
