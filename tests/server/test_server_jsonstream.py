"""JSON written piece by piece is byte for byte what orjson writes whole, in bounded pieces."""

from __future__ import annotations

from typing import Any

import anyio
import numpy as np
import orjson
import pytest

from fma_connect.server import jsonstream

RNG = np.random.default_rng(3)
VALUES: dict[str, Any] = {
    "plain layers": [
        RNG.standard_normal((5, 6)).astype(np.float32),
        RNG.integers(-9, 9, (3, 4, 5)),
        np.arange(30) > 3,
        np.ones((2, 20), np.float64),
        1.5,
        7,
    ],
    "empty arrays": [np.zeros((0, 3)), np.zeros((4, 0)), np.zeros(0, np.int8)],
    "rows larger than a piece": [np.ones((20, 1, 1, 1)), np.ones((1, 1, 30)), np.ones((3, 11))],
    "a tagged object": {"codec": "npz-b64", "format_version": 1, "payload": "aGVsbG8" * 9},
    "strings that need escapes": ['quote " back \\ newline \n tab \t é ☃ \x01' * 3],
    "nesting": (1, [2, {"a": np.arange(100).reshape(10, 10), "b": []}], {}, None, True),
}


@pytest.fixture
def small_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pieces of 7 elements and 5 characters, so small values are cut many times."""
    monkeypatch.setattr(jsonstream, "ITEMS", 7)
    monkeypatch.setattr(jsonstream, "CHARS", 5)


@pytest.mark.usefixtures("small_pieces")
@pytest.mark.parametrize("name", sorted(VALUES))
def test_pieces_join_to_what_orjson_writes(name: str) -> None:
    value = VALUES[name]
    whole = orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)
    pieces = list(jsonstream.pieces(value))
    assert b"".join(pieces) == whole
    assert jsonstream.size(value) == len(whole)

    async def collect() -> bytes:
        return b"".join([block async for block in jsonstream.stream(value)])

    assert anyio.run(collect) == whole


def test_a_large_array_is_written_in_bounded_pieces() -> None:
    array = RNG.standard_normal((300, 1000)).astype(np.float32)  # 300 000 elements
    pieces = list(jsonstream.pieces(array))
    assert len(pieces) > 4
    assert max(len(piece) for piece in pieces) < 16 * jsonstream.ITEMS  # ~11 chars a float
    assert np.array_equal(np.asarray(orjson.loads(b"".join(pieces)), np.float32), array)


@pytest.mark.usefixtures("small_pieces")
@pytest.mark.parametrize(
    "value",
    [{1: "int key"}, [np.ones(20, np.complex64)], [object()]],
    ids=["int-key", "complex64", "object"],  # stable ids: no addresses in them
)
def test_what_orjson_refuses_is_refused(value: Any) -> None:
    with pytest.raises(orjson.JSONEncodeError):
        orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)
    with pytest.raises(orjson.JSONEncodeError):
        jsonstream.size(value)
