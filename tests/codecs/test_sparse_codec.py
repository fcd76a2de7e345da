"""The ``sparse`` codec: top-k changes (by fraction or count), error feedback, lazy decoding."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fma_connect import DecodeError
from fma_connect.codecs.context import CodecContext, MissingBaseError
from fma_connect.codecs.sparse_delta import SparseDeltaCodec
from fma_connect.testing import holding, to_wire_and_back


def _update(seed: int, n: int = 10_000) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    base = rng.standard_normal(n).astype(np.float32)
    return base, base + rng.standard_normal(n).astype(np.float32) * 0.01


def test_the_largest_changes_are_sent_and_the_rest_kept_for_later() -> None:
    base, update = _update(0)
    codec = SparseDeltaCodec(0.01, "float32")
    context = holding(1, [("w", base)])
    ((_, got),) = to_wire_and_back(codec, [("w", update)], context=context)
    change = update - base
    sent = np.flatnonzero(got != base)
    assert sent.size == 100
    assert set(sent) == set(np.argsort(-np.abs(change))[:100])
    np.testing.assert_array_equal(got[sent], update[sent])
    residual = context.state["residual"]["w"]
    np.testing.assert_allclose(residual + (got - base), change, atol=1e-7)


@given(st.sampled_from(["ternary", "float16", "float32"]), st.floats(0.001, 1.0))
def test_with_error_feedback_what_is_delivered_follows_the_true_changes(
    values: str, fraction: float
) -> None:
    """Over rounds, sent changes + what is left equal the sum of the true changes."""
    rng = np.random.default_rng(1)
    codec = SparseDeltaCodec(fraction, values)
    state: dict[str, object] = {}
    base = np.zeros(500, np.float32)
    delivered = np.zeros(500, np.float64)
    truth = np.zeros(500, np.float64)
    for _ in range(5):
        change = rng.standard_normal(500).astype(np.float32) * 0.1
        context = CodecContext(7, lambda _: [("w", base)], state)
        ((_, got),) = to_wire_and_back(codec, [("w", base + change)], context=context)
        delivered += got.astype(np.float64) - base
        truth += change
    residual = state["residual"]["w"]  # type: ignore[index]
    np.testing.assert_allclose(delivered + residual, truth, atol=1e-5)


def test_fraction_one_with_float32_values_is_exact_against_any_finite_base() -> None:
    base, update = _update(2)
    codec = SparseDeltaCodec(1.0, "float32", error_feedback=False)
    back = to_wire_and_back(codec, [("w", update)], context=holding(1, [("w", base)]))
    np.testing.assert_allclose(back[0][1], update, rtol=0, atol=1e-6)


def test_ints_bools_and_updates_without_a_base_travel_whole_and_exact() -> None:
    tensors = [("n", np.arange(5, dtype=np.int32)), ("f", np.array([True, False]))]
    _, update = _update(3)
    tensors.append(("w", update))
    codec = SparseDeltaCodec(0.01)
    for context in (CodecContext(), holding(1, [("n", np.zeros(5, np.int32))])):
        back = dict(to_wire_and_back(codec, tensors, context=context))
        assert back["n"].tolist() == [0, 1, 2, 3, 4] and back["f"].tolist() == [True, False]
        assert back["w"].tobytes() == update.tobytes()


def test_a_sparse_payload_against_a_base_not_held_is_a_missing_base_error() -> None:
    base, update = _update(4)
    codec = SparseDeltaCodec()
    body = b"".join(
        bytes(memoryview(c).cast("B"))
        for c in codec.encode([("w", update)], holding(3, [("w", base)]))
    )
    with pytest.raises(MissingBaseError):
        codec.decode(body, holding(4, [("w", base)]))


def test_one_percent_ternary_is_over_a_hundred_times_smaller_than_the_raw_update() -> None:
    base, update = _update(5, 1_000_000)
    codec = SparseDeltaCodec(0.01, "ternary")
    body = sum(
        memoryview(c).nbytes for c in codec.encode([("w", update)], holding(1, [("w", base)]))
    )
    assert update.nbytes / body > 300  # 1% of the positions, ~9.6 bits each


@given(
    hnp.arrays(np.float32, st.integers(0, 40), elements=st.floats(-1e3, 1e3, width=32)),
    st.sampled_from(["ternary", "float16", "float32"]),
)
def test_random_shapes_and_empty_tensors_round_trip_in_shape(
    update: np.ndarray, values: str
) -> None:
    base = np.zeros_like(update)
    back = to_wire_and_back(
        SparseDeltaCodec(0.3, values), [("w", update)], context=holding(1, [("w", base)])
    )
    assert back[0][1].shape == update.shape and np.isfinite(back[0][1]).all()


def test_parameters_are_checked() -> None:
    with pytest.raises(ValueError, match="fraction"):
        SparseDeltaCodec(0.0)
    with pytest.raises(ValueError, match="values"):
        SparseDeltaCodec(0.1, "int3")


def test_a_change_beyond_float16_is_sent_at_its_limit_and_the_rest_kept() -> None:
    base = np.zeros(4, np.float32)
    update = np.array([1e6, 0, 0, 0], np.float32)
    codec = SparseDeltaCodec(0.25, "float16")
    context = holding(1, [("w", base)])
    ((_, got),) = to_wire_and_back(codec, [("w", update)], context=context)
    assert got[0] == np.float16(65504) and np.isfinite(got).all()
    assert context.state["residual"]["w"][0] == pytest.approx(1e6 - 65504)


def _mixed_model(seed: int) -> tuple[list[tuple[str, np.ndarray]], list[tuple[str, np.ndarray]]]:
    """A base and an update of every kind of tensor the sparse codec meets.

    float16, float32 and float64 tensors (one of them against a float64 base, as a plain
    JSON initial model is held), an int tensor and a bool one (sent whole), an empty
    and a 0-d tensor.
    """
    rng = np.random.default_rng(seed)
    shapes = {"h": (3, 5), "f": (200,), "d": (4, 6), "j": (7, 3), "e": (0, 3), "s": ()}
    dtypes = {"h": np.float16, "f": np.float32, "d": np.float64, "j": np.float32}
    dtypes.update(e=np.float32, s=np.float32)
    base, update = [], []
    for name, shape in shapes.items():
        dtype = dtypes[name]
        start = rng.standard_normal(shape).astype(dtype)
        base.append((name, start.astype(np.float64) if name == "j" else start))
        update.append((name, (start + rng.standard_normal(shape) * 0.1).astype(dtype)))
    base.append(("n", np.arange(5, dtype=np.int32)))
    update.append(("n", rng.integers(-9, 9, 5).astype(np.int32)))
    update.append(("b", rng.random(4) < 0.5))
    return base, update


def _body(codec: SparseDeltaCodec, tensors: list[tuple[str, np.ndarray]], context: Any) -> bytes:
    return b"".join(bytes(memoryview(c).cast("B")) for c in codec.encode(tensors, context))


@pytest.mark.parametrize("values", ["ternary", "float16", "float32"])
def test_lazy_decode_rebuilds_what_decode_gives_bit_for_bit(values: str) -> None:
    base, update = _mixed_model(7)
    codec = SparseDeltaCodec(0.2, values)
    body = _body(codec, update, holding(1, base))
    dense = codec.decode(bytearray(body), holding(1, base))
    lazy = codec.decode_lazily(bytearray(body), holding(1, base))
    assert [name for name, _ in lazy] == [name for name, _ in dense] == [n for n, _ in update]
    rebuilt = set()
    for (name, want), (_, got) in zip(dense, lazy, strict=True):
        if isinstance(got, np.ndarray):  # sent whole
            assert got.dtype == want.dtype and got.tobytes() == want.tobytes(), name
            continue
        rebuilt.add(name)
        assert (got.shape, got.dtype, got.size) == (want.shape, want.dtype, want.size)
        dense_again = got.dense()
        assert dense_again.shape == want.shape and dense_again.dtype == want.dtype
        assert dense_again.tobytes() == want.tobytes(), name
        flat, n = want.reshape(-1), want.size
        for start, stop in [(0, 0), (0, 3), (2, 9), (5, n), (n - 1, n + 10), (-5, 2), (n, n)]:
            part = got.rebuild(start, stop)
            assert part.dtype == want.dtype
            assert part.tobytes() == flat[max(0, start) : max(0, stop)].tobytes(), (start, stop)
    assert rebuilt == {"h", "f", "d", "j", "e", "s"}


def test_a_lazy_sparse_tensor_holds_its_changes_not_a_model() -> None:
    base, update = _update(8, 100_000)
    codec = SparseDeltaCodec(0.01, "float32")
    body = _body(codec, [("w", update)], holding(1, [("w", base)]))
    ((_, lazy),) = codec.decode_lazily(bytearray(body), holding(1, [("w", base)]))
    assert not isinstance(lazy, np.ndarray)
    assert lazy.held_nbytes == 1000 * (4 + 4)  # int32 positions, float32 values
    assert "changes=1000" in repr(lazy)


def test_a_lazy_decode_checks_what_decode_checks() -> None:
    base, update = _update(9)
    codec = SparseDeltaCodec()
    body = _body(codec, [("w", update)], holding(3, [("w", base)]))
    with pytest.raises(MissingBaseError):
        codec.decode_lazily(bytearray(body), holding(4, [("w", base)]))
    with pytest.raises(DecodeError):  # a base of another shape
        codec.decode_lazily(bytearray(body), holding(3, [("w", base[:-1])]))
    with pytest.raises(DecodeError):
        codec.decode_lazily(bytearray(body[:-3]), holding(3, [("w", base)]))


@pytest.mark.parametrize("n", [10, 1 << 20, 3 << 20])
def test_top_k_picks_k_of_the_largest_in_order_even_among_ties(n: int) -> None:
    from fma_connect.codecs.sparse_delta import _top_k

    rng = np.random.default_rng(n)
    for magnitude in (np.ones(n, np.float32), np.abs(rng.standard_normal(n)).astype(np.float32)):
        for k in (1, max(1, n // 50), n // 2):
            positions = _top_k(magnitude, k)
            assert positions.size == k and (np.diff(positions) > 0).all()
            kth = np.sort(magnitude)[-k]
            assert (magnitude[positions] >= kth).all()
            assert np.count_nonzero(magnitude > kth) <= k


@given(st.integers(1, 300), st.lists(st.integers(0, 700), min_size=1, max_size=4))
def test_a_count_sends_that_many_of_each_tensors_largest_changes(
    count: int, sizes: list[int]
) -> None:
    rng = np.random.default_rng(count)
    bases = [(f"t{i}", rng.standard_normal(n).astype(np.float32)) for i, n in enumerate(sizes)]
    updates = [
        (name, base + rng.standard_normal(base.size).astype(np.float32)) for name, base in bases
    ]
    codec = SparseDeltaCodec(count=count, values="float32")
    back = to_wire_and_back(codec, updates, context=holding(1, bases))
    for (_, base), (_, update), (_, got) in zip(bases, updates, back, strict=True):
        sent = np.flatnonzero(got != base)
        assert sent.size == min(count, base.size)
        magnitude = np.abs(update - base)
        if sent.size < base.size:  # each sent change is at least as large as any left out
            assert magnitude[sent].min() >= np.delete(magnitude, sent).max()


def test_fraction_and_count_are_one_or_the_other() -> None:
    assert SparseDeltaCodec().fraction == 0.01
    assert repr(SparseDeltaCodec(count=5)).startswith("SparseDeltaCodec(count=5,")
    with pytest.raises(ValueError, match="not both"):
        SparseDeltaCodec(0.1, count=5)
    for wrong in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="count"):
            SparseDeltaCodec(count=wrong)  # type: ignore[arg-type]
