"""fma-connect-safetensors: the ``safetensors`` codec for fma_connect.

Installing the distribution registers the codec (entry point ``safetensors`` in the
``fma_connect`` group); select it with ``WebClient(..., codec="safetensors")``.
See :mod:`fma_connect_safetensors.codec` for the layout.
"""

from __future__ import annotations

from .codec import FORMAT_VERSION, SafetensorsCodec

__all__ = ["FORMAT_VERSION", "SafetensorsCodec"]
