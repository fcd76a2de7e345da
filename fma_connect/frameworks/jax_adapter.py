"""The ``jax`` adapter: ``jax.Array`` leaves and custom pytree nodes.

A JAX model's parameters are a pytree. Its dicts, lists, tuples and named tuples (and
Flax's ``FrozenDict``, a mapping) are walked by :func:`fma_connect.spec.flatten` like
any tree; this adapter adds

* ``jax.Array`` leaves of any dtype JAX has, bfloat16 included (JAX's numpy dtypes come
  from ml_dtypes). They come back as ``jax.Array`` s; an array that was committed to a
  device or sharding is put back on it.
* nodes registered with ``jax.tree_util`` (``flax.struct`` dataclasses, Equinox
  modules, ``register_pytree_node_class`` classes): their children are named by their
  pytree keys (attribute, key or index) and the node is rebuilt from its treedef.

jax is imported only to handle objects that already come from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..hookspecs import hookimpl
from .base import Branch, Leaf, loaded

__all__ = ["JaxFramework"]

_PLAIN = (Mapping, list, tuple, np.ndarray, np.generic, bool, int, float, str, bytes)


class JaxFramework:
    """JAX arrays and registered pytree nodes."""

    name = "jax"

    def claims(self, obj: Any) -> bool:
        """Claim ``jax.Array`` s and custom pytree nodes (once jax has been imported)."""
        jax = loaded("jax")
        if jax is None or obj is None or isinstance(obj, _PLAIN):
            return False
        if isinstance(obj, jax.Array):
            return True
        return not jax.tree_util.all_leaves([obj])

    def flatten(self, obj: Any, name: str) -> Leaf | Branch:
        """An array is a leaf; a custom pytree node is a branch of its children."""
        jax = loaded("jax")
        assert jax is not None  # claims() found it
        if isinstance(obj, jax.Array):
            sharding = obj.sharding if getattr(obj, "committed", False) else None
            return Leaf(np.asarray(obj), "jax.Array", sharding)
        # One level only: every child is a leaf here and is walked by flatten itself.
        children, treedef = jax.tree_util.tree_flatten_with_path(
            obj, is_leaf=lambda node: node is not obj
        )
        return Branch([(_key_name(path[-1]), child) for path, child in children], treedef)

    def restore(self, array: np.ndarray, kind: str, meta: Any) -> Any:
        """Build a ``jax.Array`` (on the sent sharding when the sent array was committed)."""
        import jax

        if meta is not None:
            return jax.device_put(array, meta)
        return jax.numpy.array(array)

    def rebuild(self, meta: Any, items: list[tuple[str, Any]], target: Any) -> Any:
        """Rebuild the pytree node from its treedef (JAX objects are immutable: always new)."""
        import jax

        return jax.tree_util.tree_unflatten(meta, [child for _, child in items])


def _key_name(key: Any) -> str:
    """Name a pytree key: ``GetAttrKey.name``, ``DictKey.key`` or ``SequenceKey.idx``."""
    for attribute in ("name", "key", "idx"):
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return str(key)


@hookimpl
def fma_connect_register_frameworks(registry: Any) -> None:
    """Register the ``jax`` adapter."""
    registry.add(JaxFramework())
