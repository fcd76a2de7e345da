"""The ``sklearn`` adapter: the learned weights of fitted linear models and MLPs.

A fitted estimator is sent as those of its attributes it has among ``coef_``,
``intercept_`` (linear models: ``LogisticRegression``, ``SGDClassifier``, ``Ridge``...)
and ``coefs_``, ``intercepts_`` (``MLPClassifier``, ``MLPRegressor``; lists with one
array per layer), named after the attribute (``"coef_"``, ``"coefs_.0"``...).

Restored without a template the weights come back as a dict of those attributes;
restored into a fitted estimator given as the template (``like=estimator``) they are set
on it, and it is returned ready to predict (its ``classes_`` and other fitted state are
its own). scikit-learn itself is never imported: only attributes are read and set.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..exceptions import EncodeError, FrameworkError
from ..hookspecs import hookimpl
from .base import Branch, Leaf, defined_in

__all__ = ["WEIGHT_ATTRIBUTES", "SklearnFramework"]

#: The fitted attributes that are sent, in wire order.
WEIGHT_ATTRIBUTES = ("coef_", "intercept_", "coefs_", "intercepts_")


class SklearnFramework:
    """Fitted scikit-learn linear models and multi-layer perceptrons."""

    name = "sklearn"

    def claims(self, obj: Any) -> bool:
        """Claim objects whose class (or a base) comes from scikit-learn."""
        return defined_in(obj, "sklearn")

    def flatten(self, obj: Any, name: str) -> Leaf | Branch:
        """Return a branch of the estimator's weight attributes.

        Raises:
            EncodeError: the estimator is not fitted, or has no weights of that kind.
        """
        attributes = [a for a in WEIGHT_ATTRIBUTES if hasattr(obj, a)]
        if not attributes:
            raise EncodeError(
                f"the {type(obj).__name__} at {name!r} has none of "
                f"{', '.join(WEIGHT_ATTRIBUTES)}: fit it first (a few samples are enough for "
                "a template); fma_connect sends the weights of linear models and MLPs"
            )
        return Branch([(a, getattr(obj, a)) for a in attributes], tuple(attributes))

    def restore(self, array: np.ndarray, kind: str, meta: Any) -> Any:
        """Unused: an estimator's leaves are numpy arrays (restored by the numpy adapter)."""
        raise FrameworkError("the sklearn adapter makes no leaves of its own")

    def rebuild(self, meta: Any, items: list[tuple[str, Any]], target: Any) -> Any:
        """Return the attributes as a dict, or set them on the template estimator."""
        if target is None:
            return dict(items)
        for attribute, value in items:
            setattr(target, attribute, value)
        return target


@hookimpl
def fma_connect_register_frameworks(registry: Any) -> None:
    """Register the ``sklearn`` adapter."""
    registry.add(SklearnFramework())
