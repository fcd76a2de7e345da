"""JAX pytrees round-trip bit for bit, with their structure and jax.Array leaves."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import pytest
from fw_support import round_trip

from fma_connect import FrameworkError
from fma_connect.spec import flatten, restore_like

jax = pytest.importorskip("jax")
jnp = jax.numpy
ml_dtypes = pytest.importorskip("ml_dtypes")


class Moments(NamedTuple):
    mean: Any
    var: Any


@jax.tree_util.register_pytree_node_class
class Dense:
    """A custom pytree node, as flax.struct or Equinox make them."""

    def __init__(self, kernel: Any, bias: Any) -> None:
        self.kernel, self.bias = kernel, bias

    def tree_flatten(self) -> tuple[tuple[Any, Any], None]:
        return (self.kernel, self.bias), None

    @classmethod
    def tree_unflatten(cls, aux: None, children: tuple[Any, Any]) -> Dense:
        return cls(*children)


def bits(array: Any) -> tuple[str, tuple[int, ...], bytes]:
    host = np.asarray(array)
    return host.dtype.name, host.shape, np.ascontiguousarray(host).view(np.uint8).tobytes()


def params() -> dict[str, Any]:
    """Flax-style nested params, every dtype JAX holds by default, NaN payloads included."""
    key = jax.random.PRNGKey(0)
    bf16 = np.array([0x7FC1, 0x8000, 0x7F80, 0x3F80], np.uint16).view(ml_dtypes.bfloat16)
    f32 = np.array([0x7FC00001, 0x80000000, 0xFF800000], np.uint32).view(np.float32)
    return {
        "params": {
            "Dense_0": {"kernel": jax.random.normal(key, (3, 4)), "bias": jnp.zeros(4)},
            "Embed_0": {"embedding": jnp.asarray(bf16)},
        },
        "specials": jnp.asarray(f32),
        "f16": jnp.asarray([0.1, -0.0], jnp.float16),
        "ints": [jnp.asarray([-128, 127], jnp.int8), jnp.asarray([7], jnp.uint32)],
        "flags": (jnp.asarray([True, False]),),
        "complex": jnp.asarray([1 + 2j, -0.5j], jnp.complex64),
        "step": jnp.asarray(3, jnp.int32),
        "empty": jnp.zeros((0, 3)),
        "batch_stats": Moments(jnp.ones(2), jnp.full(2, 0.5, jnp.bfloat16)),
    }


def leaves_with_paths(tree: Any) -> list[tuple[str, Any]]:
    pairs = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [(jax.tree_util.keystr(path), leaf) for path, leaf in pairs]


def test_a_params_pytree_round_trips_bit_for_bit_with_its_structure(lossless: str) -> None:
    tree = params()
    back = round_trip(tree, lossless)
    assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(tree)
    assert isinstance(back["batch_stats"], Moments)
    for (path, sent), (_, got) in zip(
        leaves_with_paths(tree), leaves_with_paths(back), strict=True
    ):
        assert isinstance(got, jax.Array), path
        assert bits(got) == bits(sent), path


def test_names_follow_the_pytree_paths_in_jaxs_own_leaf_order() -> None:
    tree = params()
    tensors, spec = flatten(tree)
    assert "params.Dense_0.kernel" in spec.names
    assert "batch_stats.0" in spec.names and "batch_stats.1" in spec.names  # by position
    assert spec.frameworks == ["jax"]
    # The wire order is the order jax.tree_util flattens the tree in (dict keys sorted),
    # whatever the insertion order of its dicts.
    assert [bits(a) for _, a in tensors] == [bits(leaf) for leaf in jax.tree_util.tree_leaves(tree)]


def test_a_template_in_jaxs_key_order_restores_plain_json_into_the_right_leaves() -> None:
    """tree_map hands dicts back with sorted keys; positional weights still fit by path."""
    init = {"scale": jnp.ones(2), "bias": jnp.zeros(2)}  # init order
    tensors, _ = flatten(init)
    positional = [(str(i), np.asarray(array) + 5 * i) for i, (_, array) in enumerate(tensors)]
    template = jax.tree_util.tree_map(jnp.zeros_like, init)
    back = restore_like(template, positional)
    assert back["bias"].tolist() == [0.0, 0.0] and back["scale"].tolist() == [6.0, 6.0]


def test_custom_pytree_nodes_are_rebuilt(lossless: str) -> None:
    tree = [Dense(jnp.ones((2, 2), jnp.bfloat16), jnp.arange(2.0)), jnp.zeros(1)]
    _, spec = flatten(tree)
    assert spec.names == ["0.0", "0.1", "1"]
    back = round_trip(tree, lossless)
    assert isinstance(back[0], Dense) and isinstance(back[0].kernel, jax.Array)
    assert bits(back[0].kernel) == bits(tree[0].kernel)
    assert bits(back[0].bias) == bits(tree[0].bias)


def test_a_committed_array_comes_back_on_its_device(lossless: str) -> None:
    device = jax.devices()[0]
    tree = {"w": jax.device_put(jnp.ones(3), device)}
    assert tree["w"].committed
    back = round_trip(tree, lossless)
    assert back["w"].committed and back["w"].devices() == {device}
    assert not round_trip({"w": jnp.ones(3)}, lossless)["w"].committed


def test_like_a_template_restores_json_float64_into_its_jax_dtypes() -> None:
    template = {"kernel": jnp.zeros((2, 2), jnp.bfloat16), "bias": jnp.zeros(2)}
    received = [("0", np.array([0.1, 0.2])), ("1", np.array([[1.5, -2.0], [0.25, 3.0]]))]
    back = restore_like(template, received)
    assert back["kernel"].dtype == jnp.bfloat16 and back["kernel"].tolist() == [
        [1.5, -2],
        [0.25, 3],
    ]
    assert back["bias"].dtype == jnp.float32 and back["bias"][0] == np.float32(0.1)


def test_the_json_codec_carries_float32_and_bfloat16_through_the_spec() -> None:
    tree = {k: v for k, v in params().items() if k in ("params", "ints", "flags", "step")}
    tree["params"]["Embed_0"]["embedding"] = jnp.asarray([0.1, -3e38, 1e-40], jnp.bfloat16)
    back = round_trip(tree, "json")
    for (path, sent), (_, got) in zip(
        leaves_with_paths(tree), leaves_with_paths(back), strict=True
    ):
        assert bits(got) == bits(sent), path


def test_a_template_of_another_structure_names_the_first_difference() -> None:
    tensors, _ = flatten({"a": jnp.zeros(2), "b": jnp.zeros(3)})
    with pytest.raises(FrameworkError, match="expected 'a', received 'b'"):
        restore_like({"a": jnp.zeros(2), "c": jnp.zeros(3)}, list(reversed(tensors)))
    # The same names in another order are matched by name.
    swapped = restore_like({"b": jnp.zeros(3), "a": jnp.zeros(2)}, tensors)
    assert list(swapped) == ["b", "a"] and swapped["a"].shape == (2,)
