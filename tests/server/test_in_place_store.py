"""An aggregate computed straight into its blob (in_place.InPlace) is stored byte for byte
as computing it in memory and then writing it (Accumulator.result + store_tensors)."""

from __future__ import annotations

import mmap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest

from fma_connect.codecs.base import Tensors
from fma_connect.plugins import default_codec_registry
from fma_connect.server.blobs import BlobStore
from fma_connect.server.in_place import InPlace
from fma_connect.server.mean import SLICE, Accumulator
from fma_connect.server.weights_storage import store_tensors

REGISTRY = default_codec_registry()
MSGPACK = REGISTRY.get("msgpack")

Update = tuple[Tensors, float, bool]  # tensors, weight, typed


def _mapped(tmp_path: Path, tensors: Tensors) -> Tensors:
    """The tensors as read-only views of a file, as a round holds stored updates."""
    path = tmp_path / f"update-{len(list(tmp_path.iterdir()))}"
    path.write_bytes(b"".join(array.tobytes() for _, array in tensors) or b"\0")
    with open(path, "rb") as file:
        mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
    out: Tensors = []
    offset = 0
    for name, array in tensors:
        view = np.frombuffer(mapped, array.dtype, array.size, offset).reshape(array.shape)
        out.append((name, view))
        offset += array.nbytes
    return out


def _accumulate(updates: Sequence[Update], tmp_path: Path | None) -> Accumulator:
    accumulator = Accumulator()
    for tensors, weight, typed in updates:
        held = tensors if tmp_path is None else _mapped(tmp_path, tensors)
        assert accumulator.add(held, weight, typed=typed) is None
    return accumulator


def _stored(blobs: BlobStore, name: str) -> bytes:
    return blobs.path(name).read_bytes()


def _both(tmp_path: Path, updates: Sequence[Update], *, held: bool) -> tuple[bytes, bytes, bool]:
    """The blob bytes of the old path and of the in-place one, and whether it was placed."""
    blobs = BlobStore(tmp_path / "data")
    scratch = tmp_path / "updates"
    scratch.mkdir(exist_ok=True)
    where = scratch if held else None
    old = store_tensors(blobs, _accumulate(updates, where).result(), MSGPACK)
    accumulator = _accumulate(updates, where)
    placed = InPlace.open(blobs, accumulator.planned(), MSGPACK)
    assert placed is not None
    try:
        result = accumulator.result(placed.arrays)
        in_place = all(a is b for (_, a), b in zip(result, placed.arrays, strict=True))
        new = placed.store(result)
    finally:
        placed.discard()
    assert new.nbytes == old.nbytes and new.codec == old.codec
    return _stored(blobs, old.filename), _stored(blobs, new.filename), in_place


def _tensors(rng: np.random.Generator, dtype: Any, scale: float = 1.0) -> Tensors:
    # Past one slice for floats; exact integer sums of fractional weights are slow to take.
    long = SLICE + 7 if np.dtype(dtype).kind in "fcV" else 1031
    shapes = [(3, 5), (long,), (0, 4), ()]
    out: Tensors = []
    for i, shape in enumerate(shapes):
        if np.dtype(dtype).kind in "biu":
            info = np.iinfo(np.dtype(dtype)) if np.dtype(dtype).kind != "b" else None
            high = 2 if info is None else min(info.max, 1000)
            low = 0 if info is None else max(info.min, -1000)
            array = rng.integers(low, high, shape, endpoint=True).astype(dtype)
        elif np.dtype(dtype).kind == "c":
            array = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)
        else:
            array = (rng.standard_normal(shape) * scale).astype(dtype)
        out.append((f"t{i}", np.asarray(array)))
    return out


DTYPES = [
    np.float32,
    np.float16,
    np.float64,
    ml_dtypes.bfloat16,
    np.int8,
    np.int32,
    np.int64,
    np.uint8,
    np.uint64,
    np.bool_,
    np.complex64,
]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("weights", [[1.0], [3.0], [5.0, 1.0, 2.5]])
@pytest.mark.parametrize("held", [True, False], ids=["views", "folded"])
def test_in_place_aggregate_is_the_stored_mean(
    tmp_path: Path, dtype: Any, weights: list[float], held: bool
) -> None:
    rng = np.random.default_rng(len(weights))
    updates = [(_tensors(rng, dtype), weight, True) for weight in weights]
    old, new, in_place = _both(tmp_path, updates, held=held)
    assert new == old
    assert in_place


def test_mixed_dtypes_promote_the_same(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    updates: list[Update] = [
        (_tensors(rng, np.float16), 2.0, True),
        (_tensors(rng, np.float32), 1.0, True),
    ]
    old, new, in_place = _both(tmp_path, updates, held=True)
    assert new == old and in_place


def test_a_mean_beyond_its_dtype_is_stored_as_the_old_path_stores_it(tmp_path: Path) -> None:
    # A plain JSON layer next to a float16 one takes float16; 1e6 is beyond it: float64.
    typed: Tensors = [("w", np.ones(4, np.float16))]
    plain: Tensors = [("w", np.full(4, 1e6))]
    old, new, in_place = _both(tmp_path, [(typed, 1.0, True), (plain, 1.0, False)], held=False)
    assert new == old
    assert not in_place  # the float64 mean is not where the float16 one was planned


def test_big_float_sums_are_rescaled_the_same(tmp_path: Path) -> None:
    big: Tensors = [("w", np.full(9, np.finfo(np.float64).max / 2))]
    updates: list[Update] = [(big, 2.0**61, True), (big, 3.0, True), (big, 1.0, True)]
    old, new, in_place = _both(tmp_path, updates, held=True)
    assert new == old and in_place


class _ValueHeaded:
    """A codec whose header's length depends on the values (so no layout can be planned)."""

    name = "value-headed"
    media_type = "application/x-value-headed"
    lossless = True
    json_native = False

    def encode(self, tensors: Sequence[tuple[str, np.ndarray]]) -> list[Any]:
        header = str(float(sum(float(a.sum()) for _, a in tensors))).encode()
        return [header, *(a.reshape(-1).view(np.uint8).data for _, a in tensors)]


def test_a_layout_that_moves_is_written_whole(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    codec: Any = _ValueHeaded()
    accumulator = Accumulator()
    assert accumulator.add([("w", np.arange(8, dtype=np.float32))]) is None
    placed = InPlace.open(blobs, accumulator.planned(), codec)
    assert placed is not None
    try:
        result = accumulator.result(placed.arrays)
        stored = placed.store(result)
    finally:
        placed.discard()
    expected = b"".join(bytes(chunk) for chunk in codec.encode(accumulator.result()))
    assert _stored(blobs, stored.filename) == expected
    assert [p.name for p in tmp_path.joinpath("blobs").iterdir()] == [stored.filename]


def test_json_codecs_and_empty_models_are_not_placed(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    planned = [("w", (3,), np.dtype(np.float32))]
    assert InPlace.open(blobs, planned, REGISTRY.get("json")) is None
    assert InPlace.open(blobs, [("w", (0,), np.dtype(np.float32))], MSGPACK) is None
    assert list(blobs.directory.iterdir()) == []


def test_discarded_before_storing_leaves_no_file(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    placed = InPlace.open(blobs, [("w", (3,), np.dtype(np.float32))], MSGPACK)
    assert placed is not None
    placed.discard()
    assert list(blobs.directory.iterdir()) == []


def test_result_refuses_arrays_unlike_the_plan() -> None:
    accumulator = Accumulator()
    assert accumulator.add([("w", np.ones(3, np.float32))]) is None
    with pytest.raises(ValueError, match="planned"):
        accumulator.result([np.empty(3, np.float64)])
