"""Flattening weight trees into named tensors, and the Spec that restores them.

A *tree* is what users hand to ``send_update``: numpy arrays, numbers, framework objects
(torch tensors and modules, Keras models and variables, JAX arrays, fitted scikit-learn
estimators...), and dicts, lists and tuples (named tuples included) nesting them.
:func:`flatten` turns it into ordered ``(name, array)`` pairs for a codec, plus a
:class:`Spec` that remembers what the wire may lose - structure, names, dtypes, shapes
and the framework and kind of every leaf - so :meth:`Spec.restore` can give back the
same kind of object. :func:`restore_like` restores into a template instead, loading the
weights into it when it is a model, module or estimator.

What is not a dict, list or tuple is handed to the framework adapter that claims it
(see :mod:`fma_connect.frameworks`). The built-in ``numpy`` adapter takes arrays,
numbers and *numeric lists*: below the root, a rectangular list of numbers
(``[[0.1, 0.2], [0.3, 0.4]]``) is one tensor, so the classic
``[layer.tolist() for layer in weights]`` is a list of layers, exactly as the original
client sent it. The root itself is always the list of layers.
Names join dict keys, list positions and the keys adapters give (torch's state_dict
names...) with dots: ``{"fc": {"weight": w}}`` gives ``"fc.weight"``, ``[a, b]`` gives
``"0"`` and ``"1"``. A dict's tensors are sent in sorted key order, as JAX flattens
dicts, so equal trees give the same layer order (see :func:`wire_order`); an
``OrderedDict`` keeps its own order.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .codecs.base import Tensors
from .exceptions import EncodeError, FMAConnectError, FrameworkError
from .frameworks.base import Branch, Framework, Leaf

if TYPE_CHECKING:
    from .registry import FrameworkRegistry

__all__ = ["LeafSpec", "Spec", "flatten", "restore_like", "spec_like", "untyped", "wire_order"]


@dataclass(frozen=True)
class LeafSpec:
    """What one tensor looked like when it was sent.

    Attributes:
        name: Its dotted path in the tree.
        dtype: Its numpy dtype (native byte order).
        shape: Its shape.
        kind: What it was, as its adapter labels it: for numpy, ``ndarray``, ``scalar``
            (numpy scalar), ``int``, ``float``, ``bool`` (Python numbers) or ``list`` (a
            numeric list); otherwise e.g. ``torch.Tensor``, ``jax.Array``, ``tf.Variable``.
        framework: The name of the adapter that restores it.
        meta: What that adapter needs besides dtype and shape (device, ``requires_grad``...).
    """

    name: str
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    kind: str
    framework: str = "numpy"
    meta: Any = None


@dataclass(frozen=True)
class Spec:
    """The structure of a sent tree; restores received tensors into the same shape of object."""

    leaves: tuple[LeafSpec, ...]
    treedef: Any

    @property
    def names(self) -> list[str]:
        """The tensor names, in wire order."""
        return [leaf.name for leaf in self.leaves]

    @property
    def positional(self) -> bool:
        """Whether the tensors are named by position only (a list of layers)."""
        return _positional(self.names)

    @property
    def frameworks(self) -> list[str]:
        """The frameworks of the tree's leaves and objects, in order of first appearance."""
        found: dict[str, None] = {}

        def visit(node: Any) -> None:
            if node[0] == "leaf":
                found[node[2].name] = None
            elif node[0] == "branch":
                found[node[1].name] = None
                for child in node[4]:
                    visit(child)
            elif node[0] == "bare":
                visit(node[1])
            else:
                for child in node[-1]:
                    visit(child)

        visit(self.treedef)
        return list(found)

    def _in_sent_order(self, tensors: Tensors) -> Tensors:
        # Named tensors may arrive in another order (a server aggregating clients whose
        # dicts differ in key order answers in the first client's): match them by name.
        names = [name for name, _ in tensors]
        if names == self.names or len(set(names)) != len(names):
            return tensors
        if set(names) != set(self.names) or _positional(self.names):
            return tensors
        by_name = dict(tensors)
        return [(name, by_name[name]) for name in self.names]

    def restore(self, tensors: Tensors) -> Any:
        """Rebuild the tree from received tensors, with the sent dtypes and shapes.

        The checks are :meth:`arrays`'.

        Raises:
            FrameworkError: as :meth:`arrays`, or the framework could not build or load
                the restored weights.
        """
        return _build(self.treedef, self.leaves, self.arrays(tensors))

    def arrays(self, tensors: Tensors) -> list[np.ndarray]:
        """The received tensors as the leaves' arrays, in the leaves' order, dtypes and shapes.

        Tensors named by position (``"0"``, ``"1"``..., as plain JSON delivers them) are
        matched by position; named ones must carry the sent names, in the sent order.
        Both must have the sent shapes, except that an empty tensor from plain JSON
        (which cannot carry its shape) only needs to be empty.

        Raises:
            FrameworkError: count, names or shapes differ (the message names the first
                difference).
        """
        if len(tensors) != len(self.leaves):
            raise FrameworkError(
                f"expected {len(self.leaves)} tensors ({_preview(self.names)}), "
                f"received {len(tensors)} ({_preview([n for n, _ in tensors])})"
            )
        positional = _is_positional(tensors)
        if not positional:
            tensors = self._in_sent_order(tensors)
        arrays = []
        for leaf, (name, array) in zip(self.leaves, tensors, strict=True):
            if not positional and name != leaf.name:
                raise FrameworkError(
                    f"tensor names differ: expected {leaf.name!r}, received {name!r}"
                )
            # Plain JSON carries shapes in its nesting, except that of an empty tensor.
            fits = array.shape == leaf.shape or (
                positional and array.size == 0 == math.prod(leaf.shape)
            )
            if not fits:
                raise FrameworkError(
                    f"tensor {leaf.name!r}: expected shape {leaf.shape}, "
                    f"received {array.shape} ({array.size} values)"
                )
            arrays.append(_cast(array.reshape(leaf.shape), leaf.dtype, leaf.name))
        return arrays


#: Deeper trees are refused: no model nests this deep, but a list holding itself does.
_MAX_DEPTH = 100


def flatten(tree: Any, *, registry: FrameworkRegistry | None = None) -> tuple[Tensors, Spec]:
    """Split ``tree`` into named arrays (in order) and the Spec that restores it.

    Args:
        tree: The weights.
        registry: The framework adapters to use; default: every installed one.

    Raises:
        EncodeError: a leaf is not a number, array or object of an installed framework
            (the message names its path), or its adapter cannot send it.
    """
    return _flatten(tree, registry, bind=False)


def restore_like(
    template: Any, tensors: Tensors, *, registry: FrameworkRegistry | None = None
) -> Any:
    """Restore received tensors into the structure, dtypes, devices and framework of ``template``.

    Tensors, arrays and containers come back as new objects shaped like the template's.
    Models, modules and estimators in the template (``torch.nn.Module``, Keras models,
    fitted scikit-learn estimators) have the weights loaded into them in place, and are
    returned themselves.

    Raises:
        FrameworkError: the template cannot be read, or the tensors do not fit it (the
            message names the first difference).
    """
    return spec_like(template, registry=registry).restore(tensors)


def spec_like(template: Any, *, registry: FrameworkRegistry | None = None) -> Spec:
    """The Spec that restores received tensors into ``template`` (see :func:`restore_like`).

    Raises:
        FrameworkError: the template cannot be read.
    """
    try:
        _, spec = _flatten(template, registry, bind=True)
    except EncodeError as exc:
        raise FrameworkError(f"cannot restore into this template: {exc}") from exc
    return spec


def untyped(tensors: Tensors) -> list[np.ndarray] | dict[str, np.ndarray]:
    """Hand back tensors received without a Spec: a list if named by position, else a dict."""
    if _is_positional(tensors):
        return [array for _, array in tensors]
    return dict(tensors)


def _flatten(tree: Any, registry: FrameworkRegistry | None, bind: bool) -> tuple[Tensors, Spec]:
    """Flatten ``tree``; with ``bind``, branches keep their object to load weights into."""
    if registry is None:
        from .plugins import default_framework_registry

        registry = default_framework_registry()
    tensors: Tensors = []
    leaves: list[LeafSpec] = []

    def visit(node: Any, path: tuple[str, ...], root: bool) -> Any:
        name = ".".join(path) or "0"
        if len(path) > _MAX_DEPTH:
            raise EncodeError(
                f"the tree is nested more than {_MAX_DEPTH} levels deep at {name[:80]!r}... "
                "(does a container hold itself?)"
            )
        # The root list is the list of layers, never one numeric-list tensor.
        adapter = None if root and isinstance(node, list) else registry.find(node)
        if adapter is not None:
            part = _adapt(adapter, node, name)
            if isinstance(part, Leaf):
                array = part.array
                dtype = array.dtype.newbyteorder("=")
                leaves.append(
                    LeafSpec(name, dtype, array.shape, part.kind, adapter.name, part.meta)
                )
                tensors.append((name, array))
                return ("leaf", len(leaves) - 1, adapter)
            keys = [str(key) for key, _ in part.items]
            children = [
                visit(child, (*path, key), False)
                for key, (_, child) in zip(keys, part.items, strict=True)
            ]
            return ("branch", adapter, part.meta, keys, children, node if bind else None)
        if isinstance(node, Mapping):
            keys = list(node)
            # Tensors go on the wire in canonical order, the tree keeps the caller's order.
            visited = {k: visit(node[k], (*path, str(k)), False) for k in wire_order(node)}
            return ("dict", type(node), keys, [visited[k] for k in keys])
        if isinstance(node, list | tuple):
            children = [visit(v, (*path, str(i)), False) for i, v in enumerate(node)]
            if isinstance(node, tuple) and hasattr(node, "_fields"):
                return ("namedtuple", type(node), children)
            return ("tuple" if isinstance(node, tuple) else "list", children)
        where = f"at {name!r}" if path else "given as the weights"
        raise EncodeError(
            f"cannot send the {type(node).__module__}.{type(node).__qualname__} {where}: "
            "expected numpy arrays, numbers, dicts/lists/tuples of them, or objects of an "
            f"installed framework ({', '.join(registry.names())}){_hint(node)}"
        )

    treedef = visit(tree, (), True)
    if treedef[0] == "leaf":  # a bare array or number is sent as a list of one layer
        treedef = ("bare", treedef)
    return tensors, Spec(tuple(leaves), treedef)


def wire_order(mapping: Mapping[Any, Any]) -> list[Any]:
    """The order a mapping's entries are sent in: sorted keys, unless it is an OrderedDict.

    Two dicts with the same keys are the same tree whatever their insertion order (JAX
    flattens them sorted, and ``jax.jit``, ``tree_map`` and optax hand them back sorted),
    so they must give the same layer order: a codec that sends layers by position (plain
    ``json``, which the stock service averages position by position) would otherwise
    pair one client's tensor with another's. An ``OrderedDict`` (a torch ``state_dict``)
    keeps its order, which is part of its value.
    """
    keys = list(mapping)
    if isinstance(mapping, OrderedDict):
        return keys
    try:
        return sorted(keys)
    except TypeError:  # keys of mixed types: by type, then by their text
        return sorted(keys, key=lambda key: (type(key).__qualname__, str(key)))


def _hint(node: Any) -> str:
    """What to send instead of a common mistake (an iterator, an optimizer, None...)."""
    if node is None:
        return "; got None (did a function that should return the weights return nothing?)"
    if isinstance(node, str | bytes):
        return "; got text, not weights (load a file's weights first, e.g. with np.load)"
    if isinstance(node, Iterator):
        return (
            "; an iterator such as model.parameters() is read once and has no names: send "
            "model.state_dict(), or list(...) of it"
        )
    if type(node).__module__.startswith("torch.optim"):
        return "; an optimizer holds no model weights: send the model's state_dict()"
    return ""


def _adapt(adapter: Framework, node: Any, name: str) -> Leaf | Branch:
    """Run an adapter's flatten; its unexpected errors become EncodeErrors naming the path."""
    try:
        return adapter.flatten(node, name)
    except FMAConnectError:
        raise
    except Exception as exc:
        raise EncodeError(
            f"the {adapter.name} adapter cannot send the {type(node).__qualname__} at "
            f"{name!r}: {exc!r}"
        ) from exc


def _cast(array: np.ndarray, dtype: np.dtype[Any], name: str) -> np.ndarray:
    """Cast received values to the sent dtype; values it cannot hold are an error.

    Raises:
        FrameworkError: a value is beyond the range of ``dtype`` (numpy would make it
            infinite, or wrap it around, without a word).
    """
    if array.dtype == dtype:
        return array
    if dtype.kind in "iu" and array.dtype.kind in "fiu":
        if array.dtype.kind == "f":
            array = np.rint(array)  # an average of integer weights rounds, not truncates
        info = np.iinfo(dtype)
        if array.size and (array.min() < info.min or array.max() > info.max):
            _out_of_range(name, dtype, array, f"[{info.min}, {info.max}]")
    with np.errstate(over="ignore"):  # checked below, with a message that says where
        cast = array.astype(dtype)
    if dtype.kind in "fcV" and array.dtype.kind in "fc" and array.size:
        # Finite values beyond the dtype's range (a float64 aggregate of 1e39 into float32)
        # become infinite: compare the finiteness before and after.
        finite = np.isfinite(cast)
        if not finite.all() and not np.array_equal(np.isfinite(array), finite):
            _out_of_range(name, dtype, array, "its finite range")
    return cast


def _out_of_range(name: str, dtype: np.dtype[Any], array: np.ndarray, limits: str) -> None:
    low, high = np.min(array.real), np.max(array.real)
    raise FrameworkError(
        f"tensor {name!r}: the received values (from {low} to {high}) do not fit the sent "
        f"dtype {dtype} ({limits}); restore into a wider dtype with like=, or send that "
        "tensor in a wider dtype"
    )


def _build(node: Any, leaves: tuple[LeafSpec, ...], arrays: list[np.ndarray]) -> Any:
    kind = node[0]
    if kind == "leaf":
        leaf = leaves[node[1]]
        adapter = node[2]
        array = arrays[node[1]]
        return _framework_call(
            adapter, f"tensor {leaf.name!r}", lambda: adapter.restore(array, leaf.kind, leaf.meta)
        )
    if kind == "bare":
        return _build(node[1], leaves, arrays)
    if kind == "branch":
        _, adapter, meta, keys, children, target = node
        items = [(k, _build(c, leaves, arrays)) for k, c in zip(keys, children, strict=True)]
        owner = type(target).__qualname__ if target is not None else f"a {adapter.name} object"
        where = f"the weights of {owner}"
        return _framework_call(adapter, where, lambda: adapter.rebuild(meta, items, target))
    if kind == "dict":
        _, cls, keys, children = node
        pairs = zip(keys, (_build(c, leaves, arrays) for c in children), strict=True)
        return dict(pairs) if cls is dict else cls(pairs)
    if kind == "namedtuple":
        return node[1](*(_build(c, leaves, arrays) for c in node[2]))
    values = [_build(c, leaves, arrays) for c in node[1]]
    return tuple(values) if kind == "tuple" else values


def _framework_call(adapter: Framework, where: str, call: Callable[[], Any]) -> Any:
    """Run an adapter's restore or rebuild; its unexpected errors become FrameworkErrors."""
    try:
        return call()
    except FMAConnectError:
        raise
    except Exception as exc:
        raise FrameworkError(
            f"the {adapter.name} adapter could not restore {where}: {exc!r}"
        ) from exc


def _is_positional(tensors: Tensors) -> bool:
    return _positional([name for name, _ in tensors])


def _positional(names: list[str]) -> bool:
    return all(name == str(i) for i, name in enumerate(names))


def _preview(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f", ... {len(names) - limit} more" if len(names) > limit else "")
