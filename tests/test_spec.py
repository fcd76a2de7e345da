"""flatten() and Spec.restore(): structure, names, dtypes and shapes survive the wire."""

from __future__ import annotations

from collections import OrderedDict, namedtuple
from typing import Any

import numpy as np
import pytest

from fma_connect import EncodeError, FrameworkError, flatten
from fma_connect.spec import untyped

Pair = namedtuple("Pair", ["left", "right"])


def test_names_follow_the_tree_and_the_root_list_is_the_layer_list() -> None:
    tensors, spec = flatten({"fc": {"weight": np.zeros(2), "bias": 1.0}, "out": [np.ones(1)]})
    assert spec.names == ["fc.bias", "fc.weight", "out.0"]  # dicts in sorted key order
    assert [name for name, _ in tensors] == spec.names


def test_numeric_lists_below_the_root_are_layers_as_the_original_client_sent_them() -> None:
    layers = [[[0.1, 0.2], [0.3, 0.4]], [0.5, 0.6], 0.7]
    tensors, spec = flatten(layers)
    assert [a.shape for _, a in tensors] == [(2, 2), (2,), ()]
    assert spec.restore(tensors) == layers


def test_ragged_lists_are_containers() -> None:
    tensors, spec = flatten([[[1.0], [2.0, 3.0]]])
    assert spec.names == ["0.0", "0.1"]
    assert spec.restore(tensors) == [[[1.0], [2.0, 3.0]]]


@pytest.mark.parametrize(
    "tree",
    [
        np.arange(6, dtype=np.int16).reshape(2, 3),
        3.5,
        OrderedDict(b=np.float32(1.5), a=True),
        (np.zeros(1, np.uint8), Pair(1, np.zeros((0, 4), np.complex64))),
    ],
    ids=["bare-array", "bare-float", "ordered-dict", "tuple-namedtuple"],
)
def test_restore_gives_back_the_same_kind_of_object(tree: Any) -> None:
    tensors, spec = flatten(tree)
    back = spec.restore([(str(i), np.array(a)) for i, (_, a) in enumerate(tensors)])
    assert type(back) is type(tree)
    assert repr(back) == repr(tree)


def test_restore_casts_received_float64_to_the_sent_dtypes_and_rounds_ints() -> None:
    _, spec = flatten(
        {"w": np.zeros((2, 2), np.float32), "n": np.zeros(2, np.int32), "e": np.zeros((0, 3))}
    )
    assert spec.names == ["e", "n", "w"]  # the wire order: sorted keys
    back = spec.restore(
        [("0", np.array([])), ("1", np.array([1.6, -2.5])), ("2", np.full((2, 2), 0.1))]
    )
    assert back["w"].dtype == np.float32 and back["w"].shape == (2, 2)
    assert back["w"][0, 0] == np.float32(0.1)
    assert back["n"].tolist() == [2, -2] and back["n"].dtype == np.int32
    assert back["e"].shape == (0, 3)


def test_restore_names_the_first_difference() -> None:
    _, spec = flatten({"a": np.zeros(2), "b": np.zeros(3)})
    with pytest.raises(FrameworkError, match=r"expected 2 tensors \('a', 'b'\), received 1"):
        spec.restore([("a", np.zeros(2))])
    with pytest.raises(FrameworkError, match="expected 'b', received 'c'"):
        spec.restore([("a", np.zeros(2)), ("c", np.zeros(3))])
    with pytest.raises(FrameworkError, match=r"'b': expected shape \(3,\), received \(4,\)"):
        spec.restore([("a", np.zeros(2)), ("b", np.zeros(4))])


@pytest.mark.parametrize(
    ("tree", "where"),
    [({"a": {"b": "text"}}, "a.b"), ([np.zeros(1), object()], "1"), ({"x": 2**70}, "x")],
)
def test_unsupported_leaves_are_refused_with_their_path(tree: Any, where: str) -> None:
    with pytest.raises(EncodeError, match=f"'{where}'"):
        flatten(tree)


def test_untyped_gives_a_list_for_positional_names_and_a_dict_otherwise() -> None:
    assert isinstance(untyped([("0", np.zeros(1)), ("1", np.zeros(1))]), list)
    assert list(untyped([("w", np.zeros(1)), ("b", np.zeros(1))])) == ["w", "b"]


def test_plain_json_of_another_shape_is_refused_even_with_as_many_values() -> None:
    _, spec = flatten({"w": np.zeros((3, 2), np.float32)})
    with pytest.raises(FrameworkError, match=r"'w': expected shape \(3, 2\), received \(2, 3\)"):
        spec.restore([("0", np.zeros((2, 3)))])


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
def test_python_complex_numpy_matrix_and_masked_arrays() -> None:
    tensors, spec = flatten({"c": 1 + 2j, "m": np.matrix([[1, 2]])})
    back = spec.restore(tensors)
    assert back["c"] == 1 + 2j and type(back["m"]) is np.ndarray
    with pytest.raises(EncodeError, match="masked array at '0'.*filled"):
        flatten([np.ma.masked_array([1.0, 2.0], [False, True])])


def test_a_list_that_holds_itself_is_refused() -> None:
    loop: list[Any] = [1.0]
    loop.append(loop)
    with pytest.raises(EncodeError, match="nested more than 100 levels"):
        flatten([loop])


def test_named_tensors_in_another_order_are_matched_by_name() -> None:
    tensors, spec = flatten({"b": np.zeros(2, np.float32), "a": np.ones(3, np.int8)})
    back = spec.restore(list(reversed(tensors)))
    assert list(back) == ["b", "a"] and back["a"].dtype == np.int8 and back["a"].shape == (3,)
    with pytest.raises(FrameworkError, match="expected 'b', received 'c'"):
        spec.restore([("a", np.ones(3)), ("c", np.zeros(2))])


def test_equal_dicts_give_the_same_layer_order_and_keep_their_own_order() -> None:
    """A positional wire (plain JSON) must pair equal trees tensor by tensor."""
    a, b = np.zeros(2), np.ones(2)
    init = {"scale": a, "bias": b, "inner": {"w": a, "k": b}}
    transformed = {"bias": b, "inner": {"k": b, "w": a}, "scale": a}  # as jax.jit gives it
    wire = [[n for n, _ in flatten(tree)[0]] for tree in (init, transformed)]
    assert wire[0] == wire[1] == ["bias", "inner.k", "inner.w", "scale"]
    tensors, spec = flatten(init)
    restored = spec.restore(tensors)
    assert list(restored) == ["scale", "bias", "inner"] and list(restored["inner"]) == ["w", "k"]
    # A template in another key order restores each tensor into its own key.
    positional = [(str(i), array) for i, (_, array) in enumerate(tensors)]
    back = flatten(transformed)[1].restore(positional)
    assert back["bias"] is not None and back["bias"].tolist() == [1, 1]
    assert back["scale"].tolist() == [0, 0]


def test_an_ordered_dict_keeps_its_order_on_the_wire() -> None:
    state = OrderedDict([("fc.weight", np.zeros(2)), ("fc.bias", np.ones(1))])
    assert flatten(state)[1].names == ["fc.weight", "fc.bias"]


def test_dicts_with_keys_of_mixed_types_have_one_order() -> None:
    first = flatten({1: np.zeros(1), "a": np.ones(1)})[1].names
    assert first == flatten({"a": np.ones(1), 1: np.zeros(1)})[1].names


@pytest.mark.parametrize(
    ("weights", "hint"),
    [
        (None, "return nothing"),
        ("weights.npz", "got text"),
        (iter([np.zeros(1)]), "state_dict()"),
        ((x for x in [np.zeros(1)]), "list(...)"),
    ],
)
def test_a_top_level_object_that_is_not_weights_is_named_without_a_path(
    weights: Any, hint: str
) -> None:
    with pytest.raises(EncodeError) as refused:
        flatten(weights)
    message = str(refused.value)
    assert "given as the weights" in message and "at '0'" not in message
    assert hint in message


@pytest.mark.parametrize(
    ("dtype", "received", "limits"),
    [
        (np.float32, [1e39, 0.0], "finite range"),
        (np.float16, [7e4, 0.0], "finite range"),
        (np.int8, [300.0, 0.0], "[-128, 127]"),
        (np.uint8, [-1.0, 0.0], "[0, 255]"),
    ],
)
def test_received_values_beyond_the_sent_dtype_are_an_error_not_inf_or_wrapped(
    dtype: Any, received: list[float], limits: str
) -> None:
    _, spec = flatten({"w": np.zeros(2, dtype)})
    with pytest.raises(FrameworkError, match=r"'w'.*do not fit the sent dtype") as refused:
        spec.restore([("0", np.array(received))])
    assert limits in str(refused.value)
    # NaN and infinities that were sent as such are kept, as before.
    if np.dtype(dtype).kind == "f":
        back = spec.restore([("0", np.array([np.inf, np.nan]))])["w"]
        assert np.isinf(back[0]) and np.isnan(back[1])
