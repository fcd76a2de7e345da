"""The framework adapter contract: how one framework's objects become numpy leaves and back.

:func:`fma_connect.spec.flatten` walks a weight tree. At every node it asks the registered
adapters, the most recently registered first, whether one :meth:`~Framework.claims` it;
the one that does turns the node into either

* a :class:`Leaf` - one tensor, as a numpy array, plus what it takes to rebuild the
  framework object (dtype name, device, ``requires_grad``...), or
* a :class:`Branch` - an object holding other nodes (a torch module, a Keras model, a
  fitted estimator), given as ``(key, child)`` pairs that are walked like any other node.

On the way back, :meth:`~Framework.restore` turns a received array into the framework's
tensor, and :meth:`~Framework.rebuild` puts a branch together again - or, when the
weights are restored into a template (``like=``), loads them into that template.

``claims`` runs for every node of every tree, so it must be cheap and must never import
a framework: a framework is in :data:`sys.modules` whenever one of its objects exists,
so look it up there (see :func:`loaded`) or test where the object's class was defined
(see :func:`defined_in`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..exceptions import EncodeError

__all__ = ["Branch", "Framework", "Leaf", "defined_in", "loaded", "ml_dtype"]


@dataclass(frozen=True)
class Leaf:
    """One tensor a node stands for.

    Attributes:
        array: Its values as a numpy array (any strides or byte order; codecs normalise).
        kind: A short label of the object, kept in :class:`~fma_connect.spec.LeafSpec`
            (``"torch.Tensor"``, ``"jax.Array"``...).
        meta: What :meth:`Framework.restore` needs besides dtype and shape; opaque to
            fma_connect.
    """

    array: np.ndarray
    kind: str
    meta: Any = None


@dataclass(frozen=True)
class Branch:
    """An object that holds other nodes: a module, a model, an estimator.

    Attributes:
        items: ``(key, child)`` pairs in wire order; a child is named ``<path>.<key>``
            and may itself be a tensor, a container or another framework object.
        meta: What :meth:`Framework.rebuild` needs; opaque to fma_connect.
    """

    items: Sequence[tuple[str, Any]]
    meta: Any = None


@runtime_checkable
class Framework(Protocol):
    """What a framework adapter provides. Plugins implement this; inheriting is optional.

    Attributes:
        name: The framework's name (``"torch"``); unique in a registry.
    """

    name: str

    def claims(self, obj: Any) -> bool:
        """Return True if ``obj`` is this framework's; cheap, and never imports anything."""
        ...

    def flatten(self, obj: Any, name: str) -> Leaf | Branch:
        """Turn a claimed object into a leaf or a branch.

        Args:
            obj: The object.
            name: Its dotted path in the tree, for error messages.

        Raises:
            EncodeError: the object cannot be sent (the message names ``name``).
        """
        ...

    def restore(self, array: np.ndarray, kind: str, meta: Any) -> Any:
        """Turn a received array (in the sent dtype and shape) into the framework's object."""
        ...

    def rebuild(self, meta: Any, items: list[tuple[str, Any]], target: Any) -> Any:
        """Put a branch together from its restored children.

        Args:
            meta: The branch's ``meta`` from :meth:`flatten`.
            items: ``(key, restored child)`` pairs, in the order :meth:`flatten` gave.
            target: The template object to load the weights into, or None to build a
                new object (see :func:`fma_connect.spec.restore_like`).
        """
        ...


def loaded(module: str) -> ModuleType | None:
    """Return ``module`` if it has been imported already, else None (never imports it)."""
    return sys.modules.get(module)


def defined_in(obj: Any, *packages: str) -> bool:
    """Tell whether the class of ``obj``, or one of its bases, comes from one of ``packages``.

    Bases count, so a user's ``class Net(torch.nn.Module)`` defined in ``__main__`` is
    torch's. Nothing is imported.
    """
    for cls in type(obj).__mro__:
        module = getattr(cls, "__module__", None) or ""
        for package in packages:
            if module == package or module.startswith(package + "."):
                return True
    return False


def ml_dtype(dtype_name: str, where: str) -> np.dtype[Any]:
    """Return the numpy dtype ml_dtypes provides under ``dtype_name`` (``"bfloat16"``...).

    Args:
        dtype_name: The ml_dtypes attribute.
        where: What holds such data, for the message (``"torch tensor 'fc.weight'"``).

    Raises:
        EncodeError: ml_dtypes is not installed; the message says what to install.
    """
    try:
        import ml_dtypes
    except ImportError:
        raise EncodeError(
            f"{where} is {dtype_name}, which numpy holds only with the ml_dtypes package: "
            "pip install ml_dtypes (or fma-connect[bfloat16])"
        ) from None
    dtype: np.dtype[Any] = np.dtype(getattr(ml_dtypes, dtype_name))
    return dtype
