"""The ``tensorflow`` adapter: tensors, variables, and Keras models and layers.

* ``tf.Tensor`` (eager), ``tf.Variable`` and Keras 3 ``keras.Variable`` are leaves of
  any numeric dtype, bfloat16 included (TensorFlow's numpy bfloat16 is ml_dtypes'). They
  come back as the same kind of object: a tensor on the sent device, a variable with its
  ``trainable`` flag and name.
* A Keras model or layer (anything with ``get_weights``/``set_weights``, Keras 3 or
  ``tf_keras``) is sent as ``get_weights()``, its tensors named by position and variable
  name (``"0.kernel"``, ``"1.bias"``...; layer names are numbered per process, so they
  would not match a template built elsewhere). Restored without a template it comes back
  as the list ``get_weights()`` returns (which ``set_weights`` takes); restored into a
  model given as the template (``like=model``), the weights are set on it and it is
  returned.

``model.get_weights()`` itself is a list of numpy arrays, which needs no adapter.
TensorFlow and Keras are imported only to handle objects that already come from them.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from ..exceptions import EncodeError
from ..hookspecs import hookimpl
from .base import Branch, Leaf, defined_in, loaded

__all__ = ["TensorflowFramework"]

_PACKAGES = ("tensorflow", "keras", "tf_keras")


class TensorflowFramework:
    """TensorFlow tensors and variables, Keras variables, models and layers."""

    name = "tensorflow"

    def claims(self, obj: Any) -> bool:
        """Claim objects whose class (or a base) comes from tensorflow or keras."""
        if not defined_in(obj, *_PACKAGES):
            return False
        return _is_model(obj) or _leaf_kind(obj) is not None

    def flatten(self, obj: Any, name: str) -> Leaf | Branch:
        """A tensor or variable is a leaf; a model or layer is a branch of its weights."""
        if _is_model(obj):
            values = obj.get_weights()
            # Layer and model names are numbered per process ("dense_3"), so a template
            # built elsewhere would not match them; position plus variable name does.
            names = [str(v.name).split(":", 1)[0].rsplit("/", 1)[-1] for v in obj.weights]
            if len(names) != len(values):
                names = [""] * len(values)
            keys = [f"{i}.{n}" if n else str(i) for i, n in enumerate(names)]
            return Branch(list(zip(keys, values, strict=True)))
        kind = _leaf_kind(obj)
        if kind == "tf.Tensor":
            try:
                return Leaf(obj.numpy(), kind, obj.device)
            except AttributeError as exc:  # a symbolic tensor inside tf.function
                raise EncodeError(f"tensor {name!r} is symbolic and has no values") from exc
        device = str(getattr(obj, "device", None) or "")
        meta = (str(obj.name).split(":", 1)[0], bool(obj.trainable), device)
        return Leaf(np.asarray(obj), str(kind), meta)

    def restore(self, array: np.ndarray, kind: str, meta: Any) -> Any:
        """Build the tensor or variable that was sent."""
        if kind == "keras.Variable":
            import keras

            name, trainable, _ = meta
            return keras.Variable(array, dtype=array.dtype.name, trainable=trainable, name=name)
        import tensorflow as tf

        device = meta if kind == "tf.Tensor" else meta[2]
        with tf.device(device) if device else contextlib.nullcontext():
            if kind == "tf.Tensor":
                return tf.constant(array)
            name, trainable, _ = meta
            return tf.Variable(array, trainable=trainable, name=name or None)

    def rebuild(self, meta: Any, items: list[tuple[str, Any]], target: Any) -> Any:
        """Return the weight list, or set it on the template model and return that."""
        weights = [value for _, value in items]
        if target is None:
            return weights
        target.set_weights(weights)
        return target


def _is_model(obj: Any) -> bool:
    return all(hasattr(obj, a) for a in ("get_weights", "set_weights", "weights"))


def _leaf_kind(obj: Any) -> str | None:
    keras = loaded("keras")
    if keras is not None and isinstance(obj, getattr(keras, "Variable", ())):
        return "keras.Variable"
    tf = loaded("tensorflow")
    if tf is not None and isinstance(obj, tf.Variable):
        return "tf.Variable"
    if tf is not None and isinstance(obj, tf.Tensor):
        return "tf.Tensor"
    return None


@hookimpl
def fma_connect_register_frameworks(registry: Any) -> None:
    """Register the ``tensorflow`` adapter."""
    registry.add(TensorflowFramework())
