"""Framework adapters: numpy/Python, PyTorch, TensorFlow/Keras, JAX and scikit-learn.

Each adapter module registers itself through the ``fma_connect_register_frameworks``
hook, exactly as a third-party adapter would (see :mod:`fma_connect.frameworks.base`
for the contract). Importing an adapter module never imports its framework; the
framework is only touched once the user hands over one of its objects.
"""

from __future__ import annotations

from .base import Branch, Framework, Leaf, defined_in, loaded, ml_dtype

__all__ = ["Branch", "Framework", "Leaf", "defined_in", "loaded", "ml_dtype"]
